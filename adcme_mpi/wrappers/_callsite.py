"""CallSite: one op call on one rank, as the wrappers see it. It names the
op and the rank in every message ("mpi_bcast (rank 1 of 2): argument 'root'
= 5 is out of range [0, 1]", the same words the C++ kernels use) and turns
arguments into the tensors the ops take."""

import numpy as np
import tensorflow as tf

from .. import _loader, _tf_private, runtime
from ..op_table import DATA_DTYPES as DATA_DTYPE_NAMES
from ..op_table import message, xla_ops

# (in op_table.DATA_DTYPES' order: the messages list them so)
DATA_DTYPES = tuple(tf.as_dtype(name) for name in DATA_DTYPE_NAMES.split(", "))


def _static_int(value):
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    return None


class XLACompilationError(Exception):
    """An MPI op that does not lower to XLA (op_table.xla_ops() lists those
    that do: all but the sparse ops) was made inside tf.function(jit_compile=True). (An Exception
    subclass with its own constructor untouched, so that AutoGraph re-raises it
    as itself, not as a StagingError.)"""


class CallSite:
    def __init__(self, op, comm, collective):
        self.op = op
        self.pair = runtime.comm_pair(comm, op, collective=collective)
        self.rank, self.size = self.pair.rank, self.pair.size
        if (
            not tf.executing_eagerly()
            and _tf_private.in_xla_compilation(tf.compat.v1.get_default_graph())
            and not (_loader.xla_loaded and op in xla_ops())
        ):
            # TensorFlow would only fail when the function first runs, with
            # "No registered 'MPI...' OpKernel for XLA_CPU_JIT devices"
            why = (
                "the sparse ops do not lower to XLA (their kernels hold PETSc state across runs)"
                if _loader.xla_loaded
                else "this build has no XLA lowerings (libadcme_mpi_xla.so was not built: "
                "ADCME_MPI_XLA=OFF, or a TensorFlow without XLA's headers)"
            )
            raise self.error(
                XLACompilationError,
                "this op cannot be compiled by XLA (this is inside tf.function(jit_compile=True)): "
                f"{why}. Keep it outside: jit_compile=True on the functions that compute around "
                "it, called from a plain tf.function or graph that makes this op; or let XLA "
                "cluster everything around it by itself: am.Session(xla=True), or "
                'TF_XLA_FLAGS="--tf_xla_auto_jit=2 --tf_xla_cpu_global_jit" (README, "XLA")',
            )

    def __str__(self):
        return f"{self.op} (rank {self.rank} of {self.size})"

    def error(self, kind, text):
        return kind(f"{self}: {text}")

    @property
    def comm_attrs(self):
        """The communicators of the forward op and of its gradient ops."""
        return {"comm": self.pair.forward_handle, "grad_comm": self.pair.backward_handle}

    def data(self, arg, value, dtype=None, names=DATA_DTYPE_NAMES):
        """`value` as a tensor of a supported dtype (`names`: the op's, as
        op_table lists them)."""
        try:
            t = tf.convert_to_tensor(value, dtype=dtype)
        except (TypeError, ValueError) as err:
            raise self.error(TypeError, f"argument '{arg}' cannot be a tensor: {err}") from None
        if t.dtype.name not in names.split(", "):
            raise self.error(TypeError, message("dtype", arg, t.dtype.name, names))
        return t

    def int_arg(self, arg, value, lo, hi):
        """`root`, `dest`, `src` or `tag` as an int32 scalar tensor. A Python
        int is checked here; a tensor is checked by the kernel (same message)."""
        static = _static_int(value)
        if static is not None:
            if not lo <= static <= hi:
                raise self.error(ValueError, message("out_of_range", arg, static, lo, hi))
            return tf.constant(static, dtype=tf.int32)
        t = tf.convert_to_tensor(value)
        if t.dtype not in (tf.int32, tf.int64) or t.shape.rank not in (None, 0):
            raise self.error(
                TypeError,
                f"argument '{arg}' must be an int or a scalar int "
                f"tensor, got {t.dtype.name}{t.shape}",
            )
        return tf.cast(t, tf.int32) if t.dtype != tf.int32 else t

    def rank_arg(self, arg, value):
        return self.int_arg(arg, value, 0, self.size - 1)

    def tag(self, value):
        return self.int_arg("tag", value, 0, self.pair.tag_ub)

    def peer(self, arg, value):
        t = self.rank_arg(arg, value)
        static = _static_int(value)
        if static is not None and static == self.rank:
            raise self.error(
                ValueError,
                message("to_oneself", arg, static),
            )
        return t
