"""What every op wrapper shares: argument checks that name op, argument and
rank; and program order (MPI ops run in the order the script created them)."""
import weakref

import numpy as np
import tensorflow as tf
from tensorflow.python.framework import func_graph

from .. import runtime
from .._loader import ops as lib

DATA_DTYPES = (tf.float32, tf.float64, tf.int32, tf.int64)
GRAD_DTYPES = (tf.float32, tf.float64)


def where(op, pair):
    return f"{op} (rank {pair.rank} of {pair.size})"


def data_tensor(op, arg, value, pair, dtype=None):
    """`value` as a tensor of a supported dtype."""
    try:
        t = tf.convert_to_tensor(value, dtype=dtype)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{where(op, pair)}: argument '{arg}' cannot be a tensor: {err}") from None
    if t.dtype not in DATA_DTYPES:
        raise TypeError(f"{where(op, pair)}: argument '{arg}' has dtype {t.dtype.name}; "
                        "supported: float32, float64, int32, int64")
    return t


def _static_int(value):
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    return None


def int_arg(op, arg, value, lo, hi, pair):
    """`root`, `dest`, `src` or `tag` as an int32 scalar tensor. A Python int
    is checked here; a tensor is checked by the kernel (same message)."""
    static = _static_int(value)
    if static is not None:
        if not lo <= static <= hi:
            raise ValueError(f"{where(op, pair)}: argument '{arg}' = {static} is out of range "
                             f"[{lo}, {hi}]")
        return tf.constant(static, dtype=tf.int32)
    t = tf.convert_to_tensor(value)
    if t.dtype not in (tf.int32, tf.int64) or t.shape.rank not in (None, 0):
        raise TypeError(f"{where(op, pair)}: argument '{arg}' must be an int or a scalar int "
                        f"tensor, got {t.dtype.name}{t.shape}")
    return tf.cast(t, tf.int32) if t.dtype != tf.int32 else t


def rank_arg(op, arg, value, pair):
    return int_arg(op, arg, value, 0, pair.size - 1, pair)


def tag_arg(op, value, pair):
    return int_arg(op, "tag", value, 0, pair.tag_ub, pair)


def peer_arg(op, arg, value, pair):
    t = rank_arg(op, arg, value, pair)
    static = _static_int(value)
    if static is not None and static == pair.rank:
        raise ValueError(f"{where(op, pair)}: argument '{arg}' = {static} is this rank; "
                         "sending to oneself is an error")
    return t


# graph -> {control-flow context id: last MPI op created there}
_last_mpi_op = weakref.WeakKeyDictionary()


def in_program_order(build, deps=None):
    """Run `build()` (which creates one MPI op) so that the op executes after
    every MPI op created before it in the same graph, and after `deps`.

    tf.function already orders stateful ops; eager runs them as created.
    Plain graphs get a control edge from the previous MPI op in the same
    control-flow context. Consequence (documented): fetching an MPI op also
    runs the MPI ops created before it in that graph."""
    deps = [] if deps is None else list(deps) if isinstance(deps, (list, tuple)) else [deps]
    if tf.executing_eagerly():
        return build()
    graph = tf.compat.v1.get_default_graph()
    chained = not isinstance(graph, func_graph.FuncGraph)
    context = id(graph._get_control_flow_context()) if chained else None
    if chained:
        previous = _last_mpi_op.setdefault(graph, {}).get(context)
        if previous is not None:
            deps.append(previous)
    with graph.control_dependencies(deps):
        out = build()
    if chained:
        first = out[0] if isinstance(out, (list, tuple)) else out
        _last_mpi_op[graph][context] = first.op
    return out


def backward_comm(op):
    """Communicator handle for the gradient ops of `op`."""
    return runtime.gradient_comm(op.get_attr("comm"))
