"""What every gradient function shares: its ops run on the gradient
communicator (the forward op's `grad_comm` attr; their own gradients go back
to the forward one), in exact reverse order through the token gradient."""
import tensorflow as tf

from .. import ordering


def adjoint(op, token_grad, create):
    """Create the adjoint of `op`: `create(token, comm=..., grad_comm=...)`
    builds one MPI op and returns its outputs (token output last)."""
    comms = {"comm": op.get_attr("grad_comm"), "grad_comm": op.get_attr("comm")}
    return ordering.run_in_order(lambda token: create(token, **comms), adjoint_of=op,
                                 token=token_grad)


def cotangent(op, grad, index=0):
    """The upstream gradient of output `index`, or zeros when this rank has
    none (its loss does not depend on that output). The adjoint collective
    must still run here, because the other ranks run theirs."""
    if grad is not None:
        return grad
    return tf.zeros_like(op.outputs[index])


def differentiable(op, index=0):
    return op.outputs[index].dtype in (tf.float32, tf.float64)
