"""What every gradient function shares: its ops run on the gradient
communicator (the forward op's `grad_comm` attr; their own gradients go back
to the forward one), in exact reverse order through the token gradient."""

import tensorflow as tf

from .. import _tf_private, ordering


def adjoint(op, token_grad, create):
    """Create the adjoint of `op`: `create(token, comm=..., grad_comm=...)`
    builds one MPI op and returns its outputs (token output last)."""
    comms = {"comm": op.get_attr("grad_comm"), "grad_comm": op.get_attr("comm")}
    if _is_filler(token_grad):
        token_grad = None  # no later op consumed op's token: take the current one
    return ordering.run_in_order(
        lambda token: create(token, **comms), adjoint_of=op, token=token_grad
    )


def cotangent(op, grad, index=0):
    """The upstream gradient of output `index`, or zeros when this rank has
    none (its loss does not depend on that output). The adjoint collective
    must still run here, because the other ranks run theirs."""
    if grad is not None:
        return grad
    return tf.zeros_like(op.outputs[index])


# The dtypes whose ops have gradients (int dtypes are forward only). The ops'
# maps are linear with real coefficients (sums, copies, permutations), so
# their adjoints hold for complex values unchanged under TensorFlow's
# convention (a gradient is the conjugate of d loss / dz); the product's
# local derivative is conjugated where it is used (collectives.py).
DIFFERENTIABLE = (tf.float32, tf.float64, tf.float16, tf.bfloat16, tf.complex64, tf.complex128)


def where(op):
    """ "rank r of n" in the forward op's communicator (its Fortran handle),
    as every message says it."""
    from mpi4py import MPI

    comm = MPI.Comm.f2py(op.get_attr("comm"))
    return f"rank {comm.Get_rank()} of {comm.Get_size()}"


def differentiable(op, index=0):
    return op.outputs[index].dtype in DIFFERENTIABLE


def _is_filler(grad):
    """Whether a gradient (in a graph) is a filled-in zero: nothing consumed
    the output it is the gradient of. tf.gradients fills with
    ZerosLike(output); a GradientTape inside tf.function with a constant
    (Const, or Fill for a larger shape). No MPI op's token is either.

    For a token such a zero carries no order, so it is dropped and the
    adjoint takes the current token. Kept, ZerosLike(output) would make the
    adjoint depend on `op` itself, which for a gradient op placed before
    `op` in a v1 graph's program order (second derivatives) is a cycle; and
    inside tf.function a constant would leave the adjoint ordered by control
    edges alone, which XLA drops (ordering.run_in_order)."""
    if tf.executing_eagerly() or getattr(grad, "op", None) is None:
        return False
    if grad.op.type == "ZerosLike":
        return True
    graph = tf.compat.v1.get_default_graph()
    return grad.op.type in ("Const", "Fill") and _tf_private.is_function_graph_with_auto_deps(graph)
