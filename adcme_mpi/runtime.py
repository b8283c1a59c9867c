"""MPI runtime: initialisation, ranks, communicators, sessions, abort on error."""
import os
import sys
import threading
import time
import traceback

import numpy as np
from mpi4py import MPI
import tensorflow as tf

__all__ = [
    "mpi_init", "mpi_finalize", "mpi_initialized", "mpi_finalized", "mpi_rank",
    "mpi_size", "require_mpi", "mpi_barrier", "mpi_sync", "Session", "register_comm",
]


class MPINotReady(RuntimeError):
    """MPI is not initialised, or already finalised."""


class _CommPair:
    """The two private duplicates of a user communicator that the ops use:
    one for forward messages, one for gradient messages, so neither can match
    the other nor the user's own mpi4py traffic, whatever the tags."""

    def __init__(self, comm):
        self.user = comm
        self.forward = comm.Dup()
        self.backward = comm.Dup()
        for c in (self.forward, self.backward):
            c.Set_errhandler(MPI.ERRORS_RETURN)  # the ops turn error codes into exceptions
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        # MPI_TAG_UB is only guaranteed on COMM_WORLD (Open MPI leaves it off dups)
        ub = self.forward.Get_attr(MPI.TAG_UB)
        self.tag_ub = int(ub if ub is not None else MPI.COMM_WORLD.Get_attr(MPI.TAG_UB))

    @property
    def forward_handle(self):
        return self.forward.py2f()

    @property
    def backward_handle(self):
        return self.backward.py2f()


_pairs = {}            # user comm handle -> _CommPair
_other_direction = {}  # op comm handle -> handle its gradient ops use
_lock = threading.Lock()


def _register(comm):
    pair = _CommPair(comm)
    _pairs[comm.py2f()] = pair
    _other_direction[pair.forward_handle] = pair.backward_handle
    _other_direction[pair.backward_handle] = pair.forward_handle  # second derivatives
    return pair


@tf.autograph.experimental.do_not_convert
def register_comm(comm):
    """Prepare `comm` for the ops. Collective over `comm`: call it on all of its
    ranks. Collective ops and halo exchanges do it themselves on first use;
    point-to-point ops on a new communicator need it first."""
    require_mpi()
    with _lock:
        pair = _pairs.get(comm.py2f())
        return pair if pair is not None else _register(comm)


@tf.autograph.experimental.do_not_convert
def comm_pair(comm, op, collective):
    """The _CommPair for `comm` (default COMM_WORLD) as an op wrapper needs it."""
    require_mpi(op)
    comm = MPI.COMM_WORLD if comm is None else comm
    if not isinstance(comm, MPI.Comm):
        raise TypeError(f"{op}: argument 'comm' must be an mpi4py communicator, got {type(comm).__name__}")
    if comm == MPI.COMM_NULL:
        raise ValueError(f"{op}: argument 'comm' is MPI.COMM_NULL (this rank is not in it)")
    pair = _pairs.get(comm.py2f())
    if pair is None:
        if not collective:
            raise ValueError(
                f"{op} (rank {comm.Get_rank()}): communicator {comm} is not registered; call "
                "adcme_mpi.register_comm(comm) on all of its ranks first (a collective op on it "
                "does that too)")
        pair = register_comm(comm)
    return pair


@tf.autograph.experimental.do_not_convert
def gradient_comm(handle):
    """The communicator handle gradient ops of an op that used `handle` use."""
    return _other_direction[handle]


@tf.autograph.experimental.do_not_convert
def mpi_initialized():
    return bool(MPI.Is_initialized()) and not MPI.Is_finalized()


@tf.autograph.experimental.do_not_convert
def mpi_finalized():
    return bool(MPI.Is_finalized())


@tf.autograph.experimental.do_not_convert
def require_mpi(op="adcme_mpi"):
    if MPI.Is_finalized():
        raise MPINotReady(f"{op}: MPI is already finalized (mpi_finalize() was called)")
    if not MPI.Is_initialized():
        raise MPINotReady(f"{op}: MPI is not initialized; call adcme_mpi.mpi_init() first")


def mpi_init():
    """Initialise MPI (thread-safe level) once; later calls do nothing."""
    if MPI.Is_finalized():
        raise MPINotReady("mpi_init: MPI was already finalized and cannot be restarted")
    if not MPI.Is_initialized():
        MPI.Init_thread(MPI.THREAD_MULTIPLE)
    provided = MPI.Query_thread()
    if provided < MPI.THREAD_SERIALIZED:
        raise MPINotReady(
            f"mpi_init: MPI provides thread level {provided}; adcme_mpi needs at least "
            "MPI_THREAD_SERIALIZED (its kernels run on a TensorFlow worker thread). "
            "Do not set mpi4py.rc.thread_level below 'serialized'.")
    register_comm(MPI.COMM_WORLD)
    _install_abort_on_uncaught_exception()


def mpi_finalize():
    """Free the ops' communicators and finalise MPI. Idempotent."""
    if not mpi_initialized():
        return
    with _lock:
        for pair in _pairs.values():
            pair.forward.Free()
            pair.backward.Free()
        _pairs.clear()
        _other_direction.clear()
    MPI.Finalize()


@tf.autograph.experimental.do_not_convert
def mpi_rank(comm=None):
    require_mpi("mpi_rank")
    return (comm or MPI.COMM_WORLD).Get_rank()


@tf.autograph.experimental.do_not_convert
def mpi_size(comm=None):
    require_mpi("mpi_size")
    return (comm or MPI.COMM_WORLD).Get_size()


def mpi_barrier(comm=None):
    require_mpi("mpi_barrier")
    (comm or MPI.COMM_WORLD).Barrier()


def mpi_sync(array, root=0, comm=None):
    """Broadcast the NumPy array `array` from `root` in place (host side) and return it.
    Shape and dtype must agree on every rank."""
    require_mpi("mpi_sync")
    comm = comm or MPI.COMM_WORLD
    if not isinstance(array, np.ndarray) or not array.flags.c_contiguous:
        raise TypeError(f"mpi_sync (rank {comm.Get_rank()}): argument 'array' must be a "
                        "C-contiguous numpy.ndarray (it is overwritten in place)")
    if not 0 <= int(root) < comm.Get_size():
        raise ValueError(f"mpi_sync (rank {comm.Get_rank()}): argument 'root' = {root} is out "
                         f"of range [0, {comm.Get_size() - 1}]")
    meta = comm.allgather((array.shape, array.dtype.str))
    if any(m != meta[0] for m in meta):
        raise ValueError(f"mpi_sync (rank {comm.Get_rank()}): argument 'array' must have the "
                         f"same shape and dtype on every rank; got {meta}")
    comm.Bcast(array, root=int(root))
    return array


_CONFIG_FIELDS = set(tf.compat.v1.ConfigProto.DESCRIPTOR.fields_by_name)


def Session(*args, config=None, **kw):
    """A tf.compat.v1.Session with inter_op_parallelism_threads=1 (ADCME's
    setting). ConfigProto fields may be passed as keywords and override it."""
    proto = tf.compat.v1.ConfigProto(inter_op_parallelism_threads=1)
    if config is not None:
        proto.MergeFrom(config)
    for key in [k for k in kw if k in _CONFIG_FIELDS]:
        setattr(proto, key, kw.pop(key))
    return tf.compat.v1.Session(*args, config=proto, **kw)


_hook_installed = False


def _install_abort_on_uncaught_exception():
    """An uncaught exception on any rank prints its traceback (tagged with the
    rank) and aborts the whole job, so no peer waits forever in a collective.
    Set ADCME_MPI_NO_ABORT=1 to keep Python's default behaviour."""
    global _hook_installed
    if _hook_installed or os.environ.get("ADCME_MPI_NO_ABORT") == "1":
        return
    _hook_installed = True
    previous = sys.excepthook

    def hook(kind, value, tb):
        if not mpi_initialized() or kind is KeyboardInterrupt or MPI.COMM_WORLD.Get_size() == 1:
            previous(kind, value, tb)
            return
        rank = MPI.COMM_WORLD.Get_rank()
        text = "".join(traceback.format_exception(kind, value, tb))
        sys.stderr.write("".join(f"[rank {rank}] {line}\n" for line in text.rstrip().splitlines()))
        sys.stderr.write(f"[rank {rank}] adcme_mpi: uncaught exception on rank {rank}; "
                         "aborting all ranks (MPI_Abort)\n")
        sys.stderr.flush()
        sys.stdout.flush()
        time.sleep(1.0)  # let mpiexec forward the traceback before the job is torn down
        MPI.COMM_WORLD.Abort(1)

    sys.excepthook = hook
