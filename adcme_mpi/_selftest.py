"""The self-test `python -m adcme_mpi --check` runs under mpiexec: every op
forward (against NumPy, from every rank's input) and backward (a dot-product
test with different cotangents per rank), in graph mode. Rank 0 prints one
"selftest <op> ok|FAILED ..." line per op; the exit status is 0 only if all pass."""

import sys

import numpy as np
import tensorflow as tf

import adcme_mpi as am
from mpi4py import MPI  # noqa: E402  (after adcme_mpi: it picks the libmpi)

COMM = MPI.COMM_WORLD
RANK, SIZE = COMM.Get_rank(), COMM.Get_size()


def grid():
    m = max(d for d in range(1, SIZE + 1) if SIZE % d == 0 and d * d <= SIZE)
    return m, SIZE // m


def halo_reference(blocks, m, n):
    rows, cols = blocks[0].shape
    G = np.zeros((m * rows + 2, n * cols + 2))
    for r, b in enumerate(blocks):
        i, j = divmod(r, n)
        G[1 + i * rows : 1 + (i + 1) * rows, 1 + j * cols : 1 + (j + 1) * cols] = b
    i, j = divmod(RANK, n)
    return G[i * rows : (i + 1) * rows + 2, j * cols : (j + 1) * cols + 2]


def p2p(t):
    if SIZE == 1:
        return t * 1.0
    if RANK == 0:
        return am.mpi_send(t, 1)
    if RANK == 1:
        return am.mpi_recv(t, 0)
    return t * 1.0


def reference_p2p(xs):
    return xs[0] if RANK == 1 and SIZE > 1 else xs[RANK]


CASES = {
    "mpi_sum": ((3,), lambda t: am.mpi_sum(t, 0), lambda xs: sum(xs) if RANK == 0 else np.zeros(3)),
    "mpi_allreduce": ((3,), am.mpi_allreduce, lambda xs: sum(xs)),
    "mpi_bcast": ((3,), lambda t: am.mpi_bcast(t, SIZE - 1), lambda xs: xs[-1]),
    "mpi_gather": (
        (2,),
        lambda t: am.mpi_gather(t, 0),
        lambda xs: np.concatenate(xs) if RANK == 0 else np.zeros(2 * SIZE),
    ),
    "mpi_scatter": ((SIZE,), lambda t: am.mpi_scatter(t, 0), lambda xs: xs[0][RANK : RANK + 1]),
    "mpi_send/mpi_recv": ((3,), p2p, reference_p2p),
    "mpi_halo_exchange": (
        (2, 3),
        lambda t: am.mpi_halo_exchange(t, *grid()),
        lambda xs: halo_reference(xs, *grid()),
    ),
}


def run_case(shape, op, reference):
    rng = np.random.default_rng([7, RANK])  # different on every rank
    x, v = rng.standard_normal(shape), rng.standard_normal(shape)
    xs = COMM.allgather(x)
    with tf.Graph().as_default():
        xt, vt = tf.constant(x), tf.constant(v)
        y = op(xt)
        w = rng.standard_normal(y.shape.as_list())  # the cotangent
        (g,) = tf.gradients(y, xt, grad_ys=tf.constant(w))
        opv = op(vt)
        with am.Session() as sess:
            y_, g_, opv_ = sess.run([y, g, opv])
    forward_error = float(np.max(np.abs(y_ - reference(xs))))
    # the adjoint identity: sum over ranks of <g, v> equals that of <w, op(v)>
    lhs = COMM.allreduce(float(np.vdot(g_, v)))
    rhs = COMM.allreduce(float(np.vdot(w, opv_)))
    adjoint_error = abs(lhs - rhs) / max(abs(lhs), abs(rhs), 1.0)
    return COMM.allreduce(forward_error, op=MPI.MAX), adjoint_error


def main():
    failed = 0
    for name, (shape, op, reference) in CASES.items():
        try:
            forward, adjoint = run_case(shape, op, reference)
            ok = forward < 1e-12 and adjoint < 1e-11
            verdict = "ok" if ok else "FAILED"
            text = f"forward error {forward:.1e}, adjoint error {adjoint:.1e}"
        except Exception as err:  # report, then let every rank reach the end
            ok, verdict, text = False, "FAILED", f"{type(err).__name__}: {err}".splitlines()[0]
        failed += not ok
        if RANK == 0:
            print(f"selftest {name} {verdict} ({text}) on {SIZE} ranks", flush=True)
    am.mpi_finalize()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
