"""MPI runtime: initialisation, ranks, communicators, sessions, abort on error."""

import os
import sys
import threading
import time
import traceback

import atexit
import ctypes

import numpy as np
from mpi4py import MPI
import tensorflow as tf

from . import _loader
from ._watch import watched
from .settings import CURRENT as SETTINGS

__all__ = [
    "mpi_init",
    "mpi_finalize",
    "mpi_initialized",
    "mpi_finalized",
    "mpi_rank",
    "mpi_size",
    "require_mpi",
    "mpi_barrier",
    "mpi_sync",
    "Session",
    "register_comm",
]


class MPINotReadyError(RuntimeError):
    """MPI is not initialised, or already finalised."""


MPINotReady = MPINotReadyError  # the name before 0.2


class _CommPair:
    """The private duplicates of a user communicator that the ops use: one
    for forward messages, one for gradient messages (so neither can match the
    other nor the user's own mpi4py traffic, whatever the tags), and one for
    the cross-rank checks of both (so a rank in a forward op and a rank in a
    gradient op see that they disagree)."""

    def __init__(self, comm, op):
        self.user = comm
        self.forward, self.backward, self.check = _duplicate(comm, 3, op)
        for c in (self.forward, self.backward, self.check):
            c.Set_errhandler(MPI.ERRORS_RETURN)  # the ops turn error codes into exceptions
        _loader.capi.adcme_mpi_register_comms(
            self.forward.py2f(), self.backward.py2f(), self.check.py2f()
        )
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        # read where the ops read it (ops/core.cc, TagUpperBound)
        self.tag_ub = _loader.capi.adcme_mpi_tag_upper_bound(self.forward.py2f())

    @property
    def forward_handle(self):
        return self.forward.py2f()

    @property
    def backward_handle(self):
        return self.backward.py2f()


def _duplicate(comm, count, op):
    """`count` duplicates of `comm`: a collective, made on first use. It is
    made non-blocking and waited for under the watchdog (ADCME_MPI_TIMEOUT),
    so a rank whose peers never make an op on `comm` is told so instead of
    waiting unseen."""
    made = [comm.Idup() for _ in range(count)]
    with watched(
        f"{op} (rank {comm.Get_rank()} of {comm.Get_size()})",
        f"every rank of {_comm_name(comm)} to make its first op on it (that duplicates the "
        "communicator, a collective; call adcme_mpi.mpi_init() on every rank first if some "
        f"make no op; world rank {MPI.COMM_WORLD.Get_rank()})",
    ):
        MPI.Request.Waitall([request for _, request in made])
    return [duplicate for duplicate, _ in made]


_pairs = {}  # user comm handle -> _CommPair
_lock = threading.Lock()


def _register(comm, op):
    pair = _CommPair(comm, op)
    _pairs[comm.py2f()] = pair
    return pair


def register_comm(comm):
    """Prepare `comm` for the ops. Collective over `comm`: call it on all of its
    ranks. Collective ops and halo exchanges do it themselves on first use;
    point-to-point ops on a new communicator need it first.

    Example::

        from mpi4py import MPI
        half = MPI.COMM_WORLD.Split(am.mpi_rank() % 2)
        am.register_comm(half)   # on every rank of `half`
        y = am.mpi_send(x, 1, comm=half) if half.Get_rank() == 0 else am.mpi_recv(x, 0, comm=half)
    """
    return _registered(comm, "register_comm")


def _registered(comm, op):
    require_mpi(op)
    with _lock:
        pair = _pairs.get(comm.py2f())
        return pair if pair is not None else _register(comm, op)


def comm_pair(comm, op, collective):
    """The _CommPair for `comm` (default COMM_WORLD) as an op wrapper needs it."""
    require_mpi(op)
    comm = MPI.COMM_WORLD if comm is None else comm
    where = f"{op} (rank {MPI.COMM_WORLD.Get_rank()} of {MPI.COMM_WORLD.Get_size()})"
    if not isinstance(comm, MPI.Comm):
        raise TypeError(
            f"{where}: argument 'comm' must be an mpi4py communicator, got {type(comm).__name__}"
        )
    if comm == MPI.COMM_NULL:
        raise ValueError(f"{where}: argument 'comm' is MPI.COMM_NULL (this rank is not in it)")
    pair = _pairs.get(comm.py2f())
    if pair is None:
        if not collective:
            # registering duplicates the communicator, a collective; a
            # point-to-point op is not made by every rank, so doing it here
            # could wait forever for ranks that make no op
            call = (
                "adcme_mpi.mpi_init() on every rank first, as ADCME scripts begin"
                if comm == MPI.COMM_WORLD
                else "adcme_mpi.register_comm(comm) on all of its ranks first"
            )
            raise ValueError(
                f"{op} (rank {comm.Get_rank()} of {comm.Get_size()}): {_comm_name(comm)} is not "
                f"prepared for the ops yet; call {call} (it duplicates the communicator, a "
                "collective; the first collective op on it does that too, a point-to-point op "
                "cannot: ranks make different ones)"
            )
        pair = _registered(comm, op)
    return pair


def _comm_name(comm):
    return "COMM_WORLD" if comm == MPI.COMM_WORLD else str(comm)


def mpi_initialized():
    """Whether the package is ready for every op: mpi_init() has run (or the
    first collective op prepared COMM_WORLD) and mpi_finalize() has not.
    False right after `import adcme_mpi`, as in ADCME, so ADCME's guard
    `if not am.mpi_initialized(): am.mpi_init()` works. (Importing the
    package initialises MPI itself but does nothing collective; only
    mpi_init, a collective, makes point-to-point ops safe.)

    Example::

        if not am.mpi_initialized():
            am.mpi_init()
    """
    return _mpi_usable() and MPI.COMM_WORLD.py2f() in _pairs


def _mpi_usable():
    """MPI is initialised and not yet finalised."""
    return bool(MPI.Is_initialized()) and not MPI.Is_finalized()


def mpi_finalized():
    """Whether MPI was finalised.

    Example::

        am.mpi_finalize()
        am.mpi_finalized()   # True
    """
    return bool(MPI.Is_finalized())


def require_mpi(op="adcme_mpi"):
    """Raise MPINotReadyError unless MPI is initialised and not finalised.

    Example::

        am.require_mpi()   # raises MPINotReadyError once mpi_finalize() was called
    """
    if MPI.Is_finalized():
        raise MPINotReadyError(f"{op}: MPI is already finalized (mpi_finalize() was called)")
    if not MPI.Is_initialized():
        raise MPINotReadyError(f"{op}: MPI is not initialized; call adcme_mpi.mpi_init() first")


def _initialize_mpi():
    """What `import adcme_mpi` does: initialise MPI (thread-safe level) if
    needed and install the exit hooks. Nothing collective: the ops'
    communicators are duplicated on first use (or by mpi_init)."""
    if MPI.Is_finalized():
        raise MPINotReadyError("mpi_init: MPI was already finalized and cannot be restarted")
    if not MPI.Is_initialized():
        MPI.Init_thread(MPI.THREAD_MULTIPLE)
    provided = MPI.Query_thread()
    if provided < MPI.THREAD_SERIALIZED:
        raise MPINotReadyError(
            f"mpi_init: MPI provides thread level {provided}; adcme_mpi needs at least "
            "MPI_THREAD_SERIALIZED (its kernels run on a TensorFlow worker thread). "
            "Do not set mpi4py.rc.thread_level below 'serialized'."
        )
    _install_abort_on_uncaught_exception()
    global _exit_registered
    if not _exit_registered:
        _exit_registered = True
        atexit.register(_at_exit)  # runs before mpi4py's own finalisation (registered earlier)


_exit_registered = False


def mpi_init():
    """Initialise MPI (thread-safe level) and prepare COMM_WORLD for the ops.
    A collective: call it on every rank, first, as ADCME scripts do. Later
    calls do nothing.

    Importing the package initialises MPI but does nothing collective; without
    mpi_init, the first collective op on COMM_WORLD prepares it (every rank
    makes that op, so that is safe). Point-to-point ops need it done first,
    since ranks make different ones (rank 2 sends, rank 0 receives, ranks 1
    and 3 make no op).

    Example::

        import adcme_mpi as am
        am.mpi_init()
        if am.mpi_rank() == 2:
            am.mpi_send(tf.constant([1.0, 2.0]), 0)
    """
    _initialize_mpi()
    _registered(MPI.COMM_WORLD, "mpi_init")


def end_of_program_check():
    """The end of the program as a checked collective on COMM_WORLD: if
    another rank is still waiting in a checked collective (say, in a backward
    pass this rank never built), both get an error naming what each rank is
    doing, instead of a hang. Then, with every rank at its end, gradient
    sends that nobody received are reported (a peer's backward pass left out
    the matching op). First of all, a handle of mpi_isend / mpi_irecv that
    was never waited on is reported (op, rank, peer, tag). Returns the
    message, or None when all is well."""
    if not _mpi_usable():
        return None
    rank = MPI.COMM_WORLD.Get_rank()
    buffer = ctypes.create_string_buffer(4096)
    if _loader.capi.adcme_mpi_unwaited_requests(buffer, len(buffer)) > 0:
        return f"adcme_mpi (rank {rank}): {buffer.value.decode(errors='replace')}"
    if MPI.COMM_WORLD.Get_size() == 1:
        return None
    pair = _pairs.get(MPI.COMM_WORLD.py2f())
    if pair is None:
        return None
    if _loader.capi.adcme_mpi_end_of_program(pair.forward_handle, buffer, len(buffer)) != 0:
        return f"adcme_mpi (rank {rank}): {buffer.value.decode(errors='replace')}"
    if not SETTINGS.check:  # the end-of-program check was off: every rank here first
        with watched(f"adcme_mpi end of program (rank {rank})", "every rank to end its program"):
            pair.check.Barrier()
    # every rank has ended: a gradient send still unreceived now never will be
    if _loader.capi.adcme_mpi_complete_detached_sends(2.0, buffer, len(buffer)) > 0:
        return f"adcme_mpi (rank {rank}): {buffer.value.decode(errors='replace')}"
    return None


def _abort_with(message):
    sys.stderr.write(message + "; aborting all ranks (MPI_Abort)\n")
    sys.stderr.flush()
    sys.stdout.flush()
    time.sleep(1.0)  # let mpiexec forward the message before the job is torn down
    MPI.COMM_WORLD.Abort(1)


def mpi_finalize():
    """Finish pending gradient sends, check that every rank reached its end
    (see end_of_program_check), free the ops' communicators and finalise
    MPI. Idempotent.

    Example::

        am.mpi_finalize()   # last, on every rank
    """
    if not _mpi_usable():
        return
    problem = end_of_program_check()
    if problem:
        _abort_with(problem)
    _close("mpi_finalize")
    with _lock:
        _loader.capi.adcme_mpi_forget_comms()
        for pair in _pairs.values():
            pair.forward.Free()
            pair.backward.Free()
            pair.check.Free()
        _pairs.clear()
    MPI.Finalize()


def _close(who):
    """Ops still waiting on this rank (another thread's) end with an error
    naming mpi_finalize, no op starts any more, and once none is in flight
    PETSc ends: its objects live on the ops' communicators."""
    rank = MPI.COMM_WORLD.Get_rank()
    _loader.capi.adcme_mpi_close(f"{who} (rank {rank} of {MPI.COMM_WORLD.Get_size()})".encode())
    _loader.finalize_sparse()


def _at_exit():
    """A script that ends without mpi_finalize gets the same end-of-program
    check (before mpi4py finalises MPI)."""
    if _hook_installed and _mpi_usable() and not SETTINGS.no_abort:
        problem = end_of_program_check()
        if problem:
            _abort_with(problem)
    if _mpi_usable():
        _close("adcme_mpi end of program")
        # the checks' persistent requests, before mpi4py's MPI_Finalize (which
        # warns about any left); no op runs after this
        with _lock:
            _loader.capi.adcme_mpi_forget_comms()


def mpi_rank(comm=None):
    """This process's rank in `comm` (default COMM_WORLD).

    Example::

        r = am.mpi_rank()   # 0 .. am.mpi_size() - 1
    """
    require_mpi("mpi_rank")
    return (comm or MPI.COMM_WORLD).Get_rank()


def mpi_size(comm=None):
    """The number of ranks in `comm` (default COMM_WORLD).

    Example::

        P = am.mpi_size()
    """
    require_mpi("mpi_size")
    return (comm or MPI.COMM_WORLD).Get_size()


def mpi_barrier(comm=None):
    """Wait until every rank of `comm` (default COMM_WORLD) arrives.

    Example::

        am.mpi_barrier()   # host side, outside any graph
    """
    require_mpi("mpi_barrier")
    (comm or MPI.COMM_WORLD).Barrier()


def mpi_sync(array, root=0, comm=None):
    """Broadcast the NumPy array `array` from `root` in place (host side) and return it.
    Shape and dtype must agree on every rank.

    Example::

        theta = np.random.default_rng().standard_normal(3)
        am.mpi_sync(theta)   # rank 0's values on every rank
    """
    require_mpi("mpi_sync")
    comm = comm or MPI.COMM_WORLD
    if not isinstance(array, np.ndarray) or not array.flags.c_contiguous:
        raise TypeError(
            f"mpi_sync (rank {comm.Get_rank()}): argument 'array' must be a "
            "C-contiguous numpy.ndarray (it is overwritten in place)"
        )
    if not 0 <= int(root) < comm.Get_size():
        raise ValueError(
            f"mpi_sync (rank {comm.Get_rank()}): argument 'root' = {root} is out "
            f"of range [0, {comm.Get_size() - 1}]"
        )
    meta = comm.allgather((array.shape, array.dtype.str))
    if any(m != meta[0] for m in meta):
        raise ValueError(
            f"mpi_sync (rank {comm.Get_rank()}): argument 'array' must have the "
            f"same shape and dtype on every rank; got {meta}"
        )
    comm.Bcast(array, root=int(root))
    return array


_CONFIG_FIELDS = set(tf.compat.v1.ConfigProto.DESCRIPTOR.fields_by_name)


def _allow_cpu_auto_clustering():
    """Session(xla=True) asks for XLA auto-clustering through the session's
    global_jit_level. On a CPU, TensorFlow honours that only with the flag
    --tf_xla_cpu_global_jit, which it reads from TF_XLA_FLAGS once, when it
    first optimizes a graph, so it must be set before then: importing the
    package adds it. The flag alone changes nothing: auto-clustering stays
    off unless a session (or --tf_xla_auto_jit) asks for it
    (tests/launch/test_xla.py checks both)."""
    flags = os.environ.get("TF_XLA_FLAGS", "")
    if "--tf_xla_cpu_global_jit" not in flags:
        os.environ["TF_XLA_FLAGS"] = f"{flags} --tf_xla_cpu_global_jit".strip()


_allow_cpu_auto_clustering()


def Session(*args, config=None, xla=False, **kw):
    """A tf.compat.v1.Session with inter_op_parallelism_threads=1 (ADCME's
    setting) and soft placement (the MPI ops are CPU kernels: under a
    `tf.device("/GPU:0")` scope they run on the host, as in eager mode).
    ConfigProto fields may be passed as keywords and override it.

    xla=True turns on XLA auto-clustering for this session's graphs: the
    arithmetic between the MPI ops is compiled and fused, the MPI ops stay
    outside the clusters (README "XLA": heat's gradient 84.6 -> 26.3 ms).
    It is the same as TF_XLA_FLAGS="--tf_xla_auto_jit=2
    --tf_xla_cpu_global_jit" for one session, provided the package was
    imported before the process's first TensorFlow graph ran.

    Example::

        tf.compat.v1.disable_eager_execution()
        L = am.mpi_sum(tf.constant(1.0))
        with am.Session() as sess:      # am.Session(xla=True): auto-clustering
            print(sess.run(L))   # rank 0: the number of ranks
    """
    proto = tf.compat.v1.ConfigProto(inter_op_parallelism_threads=1, allow_soft_placement=True)
    if xla:
        proto.graph_options.optimizer_options.global_jit_level = tf.compat.v1.OptimizerOptions.ON_2
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
    if _hook_installed or SETTINGS.no_abort:
        return
    _hook_installed = True
    previous = sys.excepthook

    def hook(kind, value, tb):
        if not _mpi_usable() or kind is KeyboardInterrupt or MPI.COMM_WORLD.Get_size() == 1:
            previous(kind, value, tb)
            return
        rank = MPI.COMM_WORLD.Get_rank()
        text = "".join(traceback.format_exception(kind, value, tb))
        sys.stderr.write("".join(f"[rank {rank}] {line}\n" for line in text.rstrip().splitlines()))
        _abort_with(f"[rank {rank}] adcme_mpi: uncaught exception on rank {rank}")

    sys.excepthook = hook
