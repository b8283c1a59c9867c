"""What every op wrapper shares: argument checks that name op, argument and
rank; and program order (MPI ops run in the order the script created them)."""
import weakref

import numpy as np
import tensorflow as tf
from tensorflow.python.framework import func_graph

from .. import runtime
from .._loader import ops as lib

# Our wrappers are plain Python around MPI handles: AutoGraph has nothing to
# convert there (and warns about mpi4py's Cython methods if it tries).
no_autograph = tf.autograph.experimental.do_not_convert

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


class _Chain:
    """The MPI ops of one graph and control-flow context, in execution order.

    Forward ops run in creation order. Gradient ops run in the exact reverse
    order of the forward ops they are adjoints of, whatever order TensorFlow's
    gradient code creates them in: then matching sends and receives on
    different ranks (whose graphs differ) meet in a consistent order, and the
    backward pass cannot deadlock where the forward pass did not."""

    def __init__(self):
        self.ops = []        # tf.Operation, in execution order
        self.adjoint = []    # for each: sequence number of the op it is the adjoint of, or None
        self.seq = {}        # op name -> creation sequence number

    def position_for(self, adjoint_of):
        end = len(self.ops)
        # (a GradientTape in a v1 graph hands gradient functions a _MockOp without a name)
        name = getattr(adjoint_of, "name", None)
        if name not in self.seq:
            return end, None
        target = self.seq[name]
        # step back over the adjoints of ops created before `adjoint_of`
        while end > 0 and self.adjoint[end - 1] is not None and self.adjoint[end - 1] < target:
            end -= 1
        return end, target

    def insert(self, position, op, adjoint_seq):
        self.seq[op.name] = len(self.seq)
        self.ops.insert(position, op)
        self.adjoint.insert(position, adjoint_seq)


# graph -> {control-flow context id: _Chain}
_chains = weakref.WeakKeyDictionary()


def in_program_order(build, deps=None, adjoint_of=None):
    """Run `build()` (which creates one MPI op) in program order, after `deps`.

    Plain graphs: a control edge from the MPI op that precedes it in the
    chain of its graph and control-flow context (and, for a gradient op
    `adjoint_of` an earlier op, one to the op that follows it). So fetching
    an MPI op also runs the MPI ops created before it in that graph
    (documented). A tf.while_loop body built in graph mode gets its own chain.
    tf.function orders stateful ops by itself; eager mode runs them as they
    are created. Also used to put a whole tf.while_loop that contains MPI ops
    into the chain."""
    deps = [] if deps is None else list(deps) if isinstance(deps, (list, tuple)) else [deps]
    if tf.executing_eagerly():
        return build()
    graph = tf.compat.v1.get_default_graph()
    if isinstance(graph, func_graph.FuncGraph) and graph._add_control_dependencies:
        with graph.control_dependencies(deps):  # tf.function orders stateful ops itself
            return build()
    chain = _chains.setdefault(graph, {}).setdefault(id(graph._get_control_flow_context()), _Chain())
    position, adjoint_seq = chain.position_for(adjoint_of)
    if position > 0:
        deps.append(chain.ops[position - 1])
    with graph.control_dependencies(deps):
        out = build()
    op = (out[0] if isinstance(out, (list, tuple)) else out).op
    if position < len(chain.ops):
        chain.ops[position]._add_control_input(op)
    chain.insert(position, op, adjoint_seq)
    return out


def backward_comm(op):
    """Communicator handle for the gradient ops of `op`."""
    return runtime.gradient_comm(op.get_attr("comm"))
