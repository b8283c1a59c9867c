"""The self-test `python -m adcme_mpi --check` runs under mpiexec: every op
forward (against NumPy, from every rank's input) and backward (a dot-product
test with different cotangents per rank), in graph mode, in float64 and (the
collectives and point-to-point ops) complex128, whose dot-product test uses
complex cotangents and the conjugating inner product. Rank 0 prints one
"selftest <op> ok|FAILED ..." line per op; the exit status is 0 only if all pass."""

import sys

import numpy as np
import tensorflow as tf

import adcme_mpi as am
from adcme_mpi.op_table import OPS, selftest_cases
from adcme_mpi.wrappers.halo import near_square_grid
from mpi4py import MPI  # noqa: E402  (after adcme_mpi: it picks the libmpi)

COMM = MPI.COMM_WORLD
RANK, SIZE = COMM.Get_rank(), COMM.Get_size()


def grid():
    return near_square_grid(SIZE)


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


def nonblocking_ring(t):
    """Post a send right and a receive from the left, wait on the receive,
    then on the send (which returns t)."""
    if SIZE == 1:
        return t * 1.0
    hs = am.mpi_isend(t, (RANK + 1) % SIZE)
    hr = am.mpi_irecv(t, (RANK - 1) % SIZE)
    return am.mpi_wait(hr) + 0.5 * am.mpi_wait(hs)


def reference_p2p(xs):
    return xs[0] if RANK == 1 and SIZE > 1 else xs[RANK]


def stripe():
    """This rank's rows of the sparse cases' N x N matrix: 2 per rank, 3 on the last."""
    lo = 2 * RANK
    return lo, lo + (2 if RANK < SIZE - 1 else 3) - 1, 2 * SIZE + 1


def sparse_matrix():
    """Symmetric positive definite, with couplings across every pair of ranks."""
    n = stripe()[2]
    A = 4 * np.eye(n) - np.eye(n, k=1) - np.eye(n, k=-1)
    A += 0.5 * np.eye(n)[::-1]  # row i with row n-1-i (symmetric): the first rank with the last
    return A + n * np.eye(n)  # diagonally dominant


def sparse_case(apply):
    lo, hi, n = stripe()
    A = sparse_matrix()
    rows, cols = np.nonzero(A[lo : hi + 1])
    local = am.mpi_SparseTensor(np.stack([rows + lo, cols], 1), A[lo + rows, cols], lo, hi, n)
    return lambda t: apply(local, t)


def sparse_reference(apply):
    lo, hi, _ = stripe()
    return lambda xs: apply(sparse_matrix(), np.concatenate(xs))[lo : hi + 1]


# One case per `case` key of the op table (adcme_mpi/op_table.py; main()
# refuses a key without a case, tests/unit/test_op_table.py a public op
# without a key): the shape of this rank's input, the op, and its NumPy
# reference from every rank's input. Ops used only as gradients (no key) are
# covered by their forward op's dot-product test.
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
    # (equal blocks: the gathered length, which the cotangent needs, is known)
    "mpi_allgather": (
        (2,),
        lambda t: tf.ensure_shape(am.mpi_allgather(t), (2 * SIZE,)),
        lambda xs: np.concatenate(xs),
    ),
    "mpi_reduce_scatter": (
        (2 * SIZE,),
        am.mpi_reduce_scatter,
        lambda xs: sum(xs)[2 * RANK : 2 * RANK + 2],
    ),
    "mpi_scan": ((2, 3), am.mpi_scan, lambda xs: sum(xs[: RANK + 1])),
    # (uneven: rank r sends k + 1 slices to rank k; the received length is fixed
    # here, as the cotangent needs a static shape)
    "mpi_alltoall": (
        (SIZE * (SIZE + 1) // 2,),
        lambda t: tf.ensure_shape(
            am.mpi_alltoall(t, [k + 1 for k in range(SIZE)]), (SIZE * (RANK + 1),)
        ),
        lambda xs: np.concatenate(
            [x[RANK * (RANK + 1) // 2 : (RANK + 1) * (RANK + 2) // 2] for x in xs]
        ),
    ),
    "mpi_send/mpi_recv": ((3,), p2p, reference_p2p),
    # a ring shift: every rank gets its left neighbour's
    "mpi_exchange": (
        (3,),
        lambda t: am.mpi_exchange(t, (RANK + 1) % SIZE, (RANK - 1) % SIZE),
        lambda xs: xs[(RANK - 1) % SIZE],
    ),
    # non-blocking ring: the left neighbour's plus half its own (the send's wait)
    "mpi_isend/mpi_irecv/mpi_wait": (
        (3,),
        nonblocking_ring,
        lambda xs: xs[(RANK - 1) % SIZE] + 0.5 * xs[RANK] if SIZE > 1 else xs[0],
    ),
    "mpi_halo_exchange": (
        (2, 3),
        lambda t: am.mpi_halo_exchange(t, *grid()),
        lambda xs: halo_reference(xs, *grid()),
    ),
    "mpi_sparse_matvec": (
        (stripe()[1] - stripe()[0] + 1,),
        lambda t: sparse_case(lambda A, x: A @ x)(t),
        sparse_reference(lambda A, x: A @ x),
    ),
    "mpi_sparse_solve": (
        (stripe()[1] - stripe()[0] + 1,),
        lambda t: sparse_case(lambda A, b: A.solve(b, solver="CG", rtol=1e-15))(t),
        sparse_reference(np.linalg.solve),
    ),
}


# The cases also run in complex128 (the halo exchange and the sparse ops are
# real only).
REAL_ONLY = ("mpi_halo_exchange", "mpi_sparse_matvec", "mpi_sparse_solve")


def run_case(shape, op, reference, complex_values=False):
    rng = np.random.default_rng([7, RANK])  # different on every rank

    def draw(shape):
        x = rng.standard_normal(shape)
        return x + 1j * rng.standard_normal(shape) if complex_values else x

    x, v = draw(shape), draw(shape)
    xs = COMM.allgather(x)
    with tf.Graph().as_default():
        xt, vt = tf.constant(x), tf.constant(v)
        y = op(xt)
        w = draw(y.shape.as_list())  # the cotangent
        (g,) = tf.gradients(y, xt, grad_ys=tf.constant(w))
        opv = op(vt)
        with am.Session() as sess:
            y_, g_, opv_ = sess.run([y, g, opv])
    forward_error = float(np.max(np.abs(y_ - reference(xs))))
    # the adjoint identity: sum over ranks of <g, v> equals that of <w, op(v)>
    # (<a, b> = sum conj(a) b: for complex values g = J^H w, TF's convention)
    lhs = COMM.allreduce(complex(np.vdot(g_, v)))
    rhs = COMM.allreduce(complex(np.vdot(w, opv_)))
    adjoint_error = abs(lhs - rhs) / max(abs(lhs), abs(rhs), 1.0)
    return COMM.allreduce(forward_error, op=MPI.MAX), adjoint_error


def main():
    am.mpi_init()  # collective: the send/recv case is not made by every rank
    failed = 0
    for name in selftest_cases():
        if name not in CASES:
            raise SystemExit(f"selftest: the op table's case {name!r} is not in CASES")
        shape, op, reference = CASES[name]
        try:
            if any(row.needs_petsc for row in OPS if row.case == name):
                am.petsc_info()  # raises PETScUnavailableError where they were not built
            forward, adjoint = run_case(shape, op, reference)
            dtypes = "float64"
            if name not in REAL_ONLY:
                errors = run_case(shape, op, reference, complex_values=True)
                forward, adjoint = max(forward, errors[0]), max(adjoint, errors[1])
                dtypes += " and complex128"
            ok = forward < 1e-12 and adjoint < 1e-11
            verdict = "ok" if ok else "FAILED"
            text = f"forward error {forward:.1e}, adjoint error {adjoint:.1e}, {dtypes}"
        except am.PETScUnavailableError:
            ok, verdict, text = True, "skipped", "the sparse ops were not built: no PETSc"
        except Exception as err:  # report, then let every rank reach the end
            ok, verdict, text = False, "FAILED", f"{type(err).__name__}: {err}".splitlines()[0]
        failed += not ok
        if RANK == 0:
            print(f"selftest {name} {verdict} ({text}) on {SIZE} ranks", flush=True)
    am.mpi_finalize()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
