"""What every gradient function shares: its ops run on the gradient
communicator (the forward op's `grad_comm` attr; their own gradients go back
to the forward one), in exact reverse order through the token gradient."""

import tensorflow as tf

from .. import ordering


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


def _is_filler(token_grad):
    """tf.gradients fills a missing output gradient with ZerosLike(output). For
    a token that would make the adjoint depend on `op` itself, which for a
    gradient op placed before `op` in the program order (second derivatives)
    is a cycle; such a zero carries no order, so it is dropped."""
    return (
        token_grad is not None
        and not tf.executing_eagerly()
        and getattr(token_grad, "op", None) is not None
        and token_grad.op.type == "ZerosLike"
    )
