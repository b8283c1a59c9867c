"""The heat and Poisson applications (adcme_mpi.apps: heat, poisson, the
preconditioners and transfer operators, the sparse ones),
small enough for CI: forward on N ranks against one rank (COMM_SELF) and
against scipy.sparse, the adjoint-method gradient against central finite
differences, and loss reductions of the inverse problems."""

import os

import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.linalg
import tensorflow as tf
from mpi4py import MPI

import adcme_mpi as am
from helpers import RANK, SIZE, run_graph, sparse_ops_usable

from adcme_mpi.apps import heat, poisson, preconditioners, transfer

N = 12  # divisible by every grid the default factorisation picks for 1, 2, 3, 4, 6 ranks


def test_heat_forward_matches_one_rank():
    dist = heat.HeatProblem(N=N)  # the smallest stable number of steps
    serial = heat.HeatProblem(N=N, grid=(1, 1), comm=MPI.COMM_SELF)
    theta = heat.TRUE_THETA
    assert dist.stable(theta)
    local = run_graph(lambda: dist.simulate(tf.constant(dist.kappa(theta))))
    full = run_graph(lambda: serial.simulate(tf.constant(serial.kappa(theta))))
    for snap_local, snap_full in zip(local, full):
        np.testing.assert_allclose(dist.patch.assemble(snap_local), snap_full, rtol=0, atol=1e-12)


def test_heat_inverse_recovers_kappa():
    summary = heat.run(N=N, maxiter=60)
    assert summary["theta_error"] < 1e-6, summary
    assert summary["loss"] < 1e-8 * summary["loss0"], summary


def poisson_matrix(N, kappa_on_nodes_with_border):
    """scipy.sparse K = -div(kappa grad) with averaged kappa, zero Dirichlet."""
    h = 1.0 / (N + 1)
    kb = kappa_on_nodes_with_border
    idx = np.arange(N * N).reshape(N, N)
    rows, cols, vals = [], [], []
    for i in range(N):
        for j in range(N):
            c = kb[i + 1, j + 1]
            diag = 0.0
            for di, dj in ((0, 1), (0, -1), (1, 0), (-1, 0)):
                face = (c + kb[i + 1 + di, j + 1 + dj]) / 2
                diag += face
                if 0 <= i + di < N and 0 <= j + dj < N:
                    rows.append(idx[i, j])
                    cols.append(idx[i + di, j + dj])
                    vals.append(-face / h**2)  # noqa: E702
            rows.append(idx[i, j])
            cols.append(idx[i, j])
            vals.append(diag / h**2)  # noqa: E702
    return scipy.sparse.csr_matrix((vals, (rows, cols)), shape=(N * N, N * N))


def test_poisson_forward_matches_scipy_and_one_rank():
    prob = poisson.PoissonProblem(N=N)
    serial = poisson.PoissonProblem(N=N, grid=(1, 1), comm=MPI.COMM_SELF)
    u_local = run_graph(lambda: prob.solve(tf.constant(poisson.exact_kappa(prob.xb, prob.yb))))
    u_serial = run_graph(
        lambda: serial.solve(tf.constant(poisson.exact_kappa(serial.xb, serial.yb)))
    )
    u = prob.patch.assemble(u_local)
    K = poisson_matrix(N, poisson.exact_kappa(serial.xb, serial.yb))
    reference = scipy.sparse.linalg.spsolve(K.tocsc(), -serial.f.ravel()).reshape(N, N)
    np.testing.assert_allclose(u, reference, rtol=0, atol=1e-8 * np.max(np.abs(reference)))
    np.testing.assert_allclose(u, u_serial, rtol=0, atol=1e-10 * np.max(np.abs(reference)))
    # and the discretisation converges to the manufactured solution (O(h^2))
    exact = prob.patch.assemble(poisson.exact_u(prob.x, prob.y))
    assert np.max(np.abs(u - exact)) < 2e-3 * np.max(np.abs(exact))


def test_poisson_inverse_hessian_vector_product_matches_differences():
    """H p of the NN-kappa inverse problem's loss (network -> kappa -> the
    adjoint-method solve -> misfit summed on rank 0) against central
    differences of the gradient: second derivatives through nested
    ordering.custom_gradient blocks, with halo exchanges and allreduces in
    every solve."""
    # N = 6 is divisible by every grid too; no preconditioner: half the graph
    prob = poisson.PoissonProblem(N=6, tol=1e-14, preconditioner=None)
    gen = np.random.default_rng(40)  # the same on every rank: rank 0's value counts
    w0 = poisson.init_weights()
    v = gen.standard_normal(w0.size)
    graph = tf.Graph()
    with graph.as_default():
        observed = tf.constant(poisson.exact_u(prob.x, prob.y))
        weights0, _, grad = poisson.build_inverse(prob, observed)
        p, hp = poisson.build_hessp(weights0, grad)
        with am.Session(graph=graph) as sess:
            # the same fetches in every run: the graph is prepared once
            _, hv = sess.run([grad, hp], {weights0: w0, p: v})
            eps = 1e-5
            g_plus, _ = sess.run([grad, hp], {weights0: w0 + eps * v, p: v})
            g_minus, _ = sess.run([grad, hp], {weights0: w0 - eps * v, p: v})
    if RANK == 0:  # the loss and the weights live on rank 0
        fd = (g_plus - g_minus) / (2 * eps)
        error = np.linalg.norm(hv - fd) / np.linalg.norm(fd)
        print(f"poisson H p: relative error {error:.1e}")
        assert error < 1e-6, f"H p differs from differences by {error:.2e} (relative)"


def test_poisson_block_jacobi_same_solution_fewer_iterations():
    """The preconditioner changes the path, not the answer: same u as plain
    CG, in fewer iterations (about N-independent on one rank)."""

    def solve(preconditioner):
        prob = poisson.PoissonProblem(N=24, preconditioner=preconditioner)
        return list(prob.solve_counted(tf.constant(poisson.exact_kappa(prob.xb, prob.yb))))

    results = {pc: run_graph(lambda pc=pc: solve(pc)) for pc in ("block-jacobi", None)}
    (u_pc, its_pc), (u_cg, its_cg) = results["block-jacobi"], results[None]
    np.testing.assert_allclose(u_pc, u_cg, rtol=0, atol=1e-10 * np.max(np.abs(u_cg)))
    assert its_pc < its_cg / 2, (its_pc, its_cg)


def test_poisson_two_level_same_solution_iterations_flat():
    """The coarse correction changes the path, not the answer; on a grid with
    interior block corners it needs no more iterations than block-Jacobi."""

    def solve(preconditioner):
        prob = poisson.PoissonProblem(N=24, preconditioner=preconditioner)
        return list(prob.solve_counted(tf.constant(poisson.exact_kappa(prob.xb, prob.yb))))

    u_2l, its_2l = run_graph(lambda: solve("two-level"))
    u_bj, its_bj = run_graph(lambda: solve("block-jacobi"))
    np.testing.assert_allclose(u_2l, u_bj, rtol=0, atol=1e-10 * np.max(np.abs(u_bj)))
    assert its_2l <= its_bj, (its_2l, its_bj)


def test_poisson_multigrid_same_solution_iterations_as_one_rank():
    """Multigrid changes the path, not the answer, and its iteration count
    does not grow with the number of ranks: on N ranks at most 2 more than
    on one, where it needs fewer than block-Jacobi's 22 (which grows to
    32-42 on 2-6 ranks)."""

    def solve(prob):
        return list(prob.solve_counted(tf.constant(poisson.exact_kappa(prob.xb, prob.yb))))

    prob = poisson.PoissonProblem(N=24, preconditioner="multigrid")
    one = poisson.PoissonProblem(N=24, grid=(1, 1), comm=MPI.COMM_SELF, preconditioner="multigrid")
    u_mg, its_mg = run_graph(lambda: solve(prob))
    u_one, its_one = run_graph(lambda: solve(one))
    u_mg = prob.patch.assemble(u_mg)
    np.testing.assert_allclose(u_mg, u_one, rtol=0, atol=1e-10 * np.max(np.abs(u_one)))
    assert its_mg <= its_one + 2, (its_mg, its_one)
    assert its_one < 22, its_one


def test_poisson_multigrid_gathered_at_once_solves_the_same_problem():
    """Multigrid(coarsen_blocks=False), the gathered grid's V-cycle alone that
    benchmarks/scaling.py --mode vcycle times, is a working preconditioner
    too: the same solution, in no more iterations than block-Jacobi needs."""
    prob = poisson.PoissonProblem(N=24, preconditioner=None)
    prob.preconditioner = preconditioners.Multigrid(prob, coarsen_blocks=False)
    assert len(prob.preconditioner.levels) == 1
    reference = poisson.PoissonProblem(N=24, preconditioner="block-jacobi")

    def solve(p):
        return list(p.solve_counted(tf.constant(poisson.exact_kappa(p.xb, p.yb))))

    u, its, u_bj, its_bj = run_graph(lambda: solve(prob) + solve(reference))
    np.testing.assert_allclose(u, u_bj, rtol=0, atol=1e-10 * np.max(np.abs(u_bj)))
    assert its <= its_bj, (its, its_bj)


@pytest.mark.parametrize("N", [24, 30])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_poisson_multigrid_is_symmetric_positive_definite(dtype, N):
    """The V-cycle M^-1 as CG needs it: <M^-1 a, b> = <a, M^-1 b> and
    <a, M^-1 a> > 0 summed over ranks, for vectors that differ per rank
    (restriction is exactly the transpose of interpolation, across blocks;
    N = 30 gives odd blocks on 2-4 ranks, 15 -> 8 -> 4: coarse cells that
    are not whole fine cells, across block edges)."""
    prob = poisson.PoissonProblem(N=N, preconditioner="multigrid")
    rng = np.random.default_rng(RANK)
    a, b = rng.standard_normal((2, prob.patch.rows, prob.patch.cols)).astype(dtype)

    def build():
        kappa = tf.constant(poisson.exact_kappa(prob.xb, prob.yb).astype(dtype))
        precondition = prob.preconditioner.prepare(prob.faces(kappa))
        Ma, Mb = precondition(tf.constant(a)), precondition(tf.constant(b))
        return [prob.dot(Ma, b), prob.dot(a, Mb), prob.dot(a, Ma)]

    ab, ba, aa = run_graph(build)
    rtol = 1e-4 if dtype == np.float32 else 1e-11
    assert abs(ab - ba) <= rtol * max(abs(ab), abs(ba)), (ab, ba)
    assert aa > 0, aa


@pytest.mark.parametrize("N", [24, 30, 48])
def test_poisson_multigrid_on_rings_is_the_same_v_cycle(N):
    """Smoothing on the neighbours' cells (one exchange of b, one of the
    coarse correction per level) computes the same M^-1 r as exchanging before
    every sweep, on every rank: at the block edges, the physical boundary
    and the corners the redundant values are the neighbours' own."""

    class ExchangingEverySweep(preconditioners.Multigrid):
        RING = 10**6  # no level is that large: none smooths on rings

    prob = poisson.PoissonProblem(N=N, preconditioner="multigrid")
    on_rings = [bool(g.transfer and g.transfer.on_rings) for g in prob.preconditioner.levels]
    assert any(on_rings) == (min(prob.patch.rows, prob.patch.cols) >= 3), on_rings
    r = np.random.default_rng(RANK).standard_normal((prob.patch.rows, prob.patch.cols))

    def build():
        faces = prob.faces(tf.constant(poisson.exact_kappa(prob.xb, prob.yb)))
        return [
            multigrid.prepare(faces)(tf.constant(r))
            for multigrid in (prob.preconditioner, ExchangingEverySweep(prob))
        ]

    rings, every_sweep = run_graph(build)
    np.testing.assert_allclose(rings, every_sweep, rtol=0, atol=1e-12 * np.max(np.abs(every_sweep)))


def test_poisson_multigrid_halo_exchanges_per_cycle_are_what_the_model_counts():
    """benchmarks/scaling.py records halo_exchanges per level for the scaling
    model: one V-cycle adds exactly that many halo exchange ops to the graph
    (N = 48: levels on rings and, on 4 ranks, small ones exchanging every sweep)."""
    prob = poisson.PoissonProblem(N=48, preconditioner="multigrid")
    multigrid = prob.preconditioner

    def exchanges(cycles):
        with tf.Graph().as_default() as graph:
            precondition = multigrid.prepare(
                prob.faces(tf.constant(poisson.exact_kappa(prob.xb, prob.yb)))
            )
            r = tf.zeros([prob.patch.rows, prob.patch.cols], tf.float64)
            for _ in range(cycles):
                r = precondition(r)
        return sum(op.type == "MPIHaloExchange" for op in graph.get_operations())

    counted = sum(multigrid.halo_exchanges(level) for level in multigrid.levels)
    assert exchanges(2) - exchanges(1) == counted > 0, (exchanges(2) - exchanges(1), counted)


@pytest.mark.parametrize("fine", [1, 2, 3, 5, 8, 15, 75, 300])
def test_multigrid_interpolation_is_linear_and_reaches_as_far_as_the_halo(fine):
    """Along one axis of `fine` cells halved (75 -> 38: coarse cells of 75/38
    fine widths): interpolation reproduces every linear function of position
    from the coarse centres (ghosts included) at the fine centres, also on the
    neighbours' fine cells a restriction collects from; a fine cell one past
    that reach takes nothing from this block's coarse cells, so a halo of
    `reach` cells is enough and no wider than needed. Restriction is the
    literal transpose of the same matrix; the multi-rank SPD test above
    checks it across blocks and boundaries."""
    coarse = transfer.halved(fine)
    reach = transfer.restriction_reach(fine, coarse)
    assert reach <= 1 and (coarse < fine) == (reach == 1), (fine, coarse, reach)
    H = fine / coarse
    coarse_x = (np.arange(-1, coarse + 1) + 0.5) * H  # in fine widths
    beyond = reach + 1
    P = transfer.linear_interpolation(fine, coarse, beyond)
    fine_x = np.arange(-beyond, fine + beyond) + 0.5
    for a, b in [(1.0, 0.0), (0.3, -1.7)]:
        inside = P[1 : fine + 2 * beyond - 1]  # every row but the ones one past the reach
        np.testing.assert_allclose(inside @ (a + b * coarse_x), (a + b * fine_x)[1:-1], atol=1e-12)
    own = slice(1, coarse + 1)
    assert not P[[0, -1]][:, own].any(), "a cell past the reach takes this block's coarse cells"
    if reach:
        assert P[[1, -2]][:, own].any(), "the reach is wider than needed"
    np.testing.assert_array_equal(transfer.linear_interpolation(fine, coarse), P[beyond:-beyond])
    average = transfer.cell_average(fine, coarse)
    np.testing.assert_allclose(average.sum(axis=1), 1.0)
    assert ((average > 0).sum(axis=0) == 1).all(), "a fine cell in two coarse cells"


def test_poisson_two_level_coarse_matrix_is_galerkin():
    """A0 assembled across ranks from each block's hats equals Phi^T K Phi
    built serially from the whole grid (scipy) for the same kappa."""
    prob = poisson.PoissonProblem(N=24, preconditioner="two-level")
    two_level = prob.preconditioner
    if not isinstance(two_level, preconditioners.TwoLevel):  # it fell back to block-Jacobi
        pytest.skip("a 1 x n grid has no interior block corners")
    A0 = run_graph(
        lambda: two_level.coarse_matrix(
            prob.faces(tf.constant(poisson.exact_kappa(prob.xb, prob.yb)))
        )
    )
    serial = poisson.PoissonProblem(N=24, grid=(1, 1), comm=MPI.COMM_SELF)
    K = poisson_matrix(24, poisson.exact_kappa(serial.xb, serial.yb))
    p = prob.patch
    Phi = np.zeros((24 * 24, two_level.count))
    for rank, (hats, index) in enumerate(
        MPI.COMM_WORLD.allgather((two_level.hats, two_level.index))
    ):
        bi, bj = divmod(rank, p.n)
        for hat, v in zip(hats, index):
            block = np.zeros((24, 24))
            block[bi * p.rows : (bi + 1) * p.rows, bj * p.cols : (bj + 1) * p.cols] = hat
            Phi[:, v] += block.ravel()
    np.testing.assert_allclose(A0, Phi.T @ (K @ Phi), rtol=1e-10, atol=0)


@pytest.mark.parametrize("preconditioner", ["block-jacobi", "two-level", "multigrid"])
def test_poisson_gradient_matches_central_differences(preconditioner):
    if preconditioner == "multigrid" and SIZE > 2:
        # the adjoint path is the same CG for every preconditioner; what multigrid
        # must bring, a symmetric M^-1 across ranks, is tested at every size above
        pytest.skip("multigrid's gradient on 1-2 ranks is enough per CI run")
    prob = poisson.PoissonProblem(N=N, preconditioner=preconditioner)
    observed = poisson.exact_u(prob.x, prob.y)
    graph = tf.Graph()
    with graph.as_default():
        weights0, loss, grad = poisson.build_inverse(prob, tf.constant(observed))
        with am.Session(graph=graph) as sess:
            w = poisson.init_weights(seed=1)
            direction = np.random.default_rng(7).standard_normal(w.size)  # same on every rank
            L, G = sess.run([loss, grad], {weights0: w})
            eps = 1e-5
            Lp = sess.run(loss, {weights0: w + eps * direction})
            Lm = sess.run(loss, {weights0: w - eps * direction})
    if RANK == 0:
        fd = (Lp - Lm) / (2 * eps)
        ad = float(G @ direction)
        assert abs(fd - ad) <= 1e-6 * max(abs(ad), 1e-8), (fd, ad)
    else:
        assert L == 0.0  # mpi_sum: the loss lives on rank 0


@pytest.mark.skipif(SIZE > 4, reason="one inverse run is enough per CI; 1-4 ranks cover it")
def test_poisson_inverse_reduces_loss(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("poisson")) if RANK == 0 else None
    out = MPI.COMM_WORLD.bcast(out)
    summary = poisson.run(N=N, out=out, maxiter=30)
    assert summary["loss"] < summary["loss0"] / 50, summary
    if RANK == 0:
        for path in summary["figures"]:
            assert os.path.getsize(path) > 1000


def sparse_poisson_or_skip():
    """adcme_mpi.apps.sparse_poisson, where the sparse ops were built (PETSc)."""
    sparse_ops_usable()
    from adcme_mpi.apps import sparse_poisson

    return sparse_poisson


def test_sparse_poisson_is_the_matrix_free_problem():
    """ADCME's MPI Poisson on PETSc (row stripes) and poisson.py's matrix-free
    CG (patches) are the same discrete problem: the same matrix, the same
    solution, and the same gradient of the inverse problem's loss."""
    sparse_poisson = sparse_poisson_or_skip()
    prob = poisson.PoissonProblem(N=N)
    stripes = sparse_poisson.SparsePoisson(N)
    kappa = lambda x, y: tf.constant(poisson.exact_kappa(x, y))  # noqa: E731
    K, u_sparse = run_graph(
        lambda: (stripes.matrix(kappa).to_dense(), stripes.solve(kappa, "GAMG", rtol=1e-13))
    )
    serial = poisson.PoissonProblem(N=N, grid=(1, 1), comm=MPI.COMM_SELF)
    reference = poisson_matrix(N, poisson.exact_kappa(serial.xb, serial.yb)).toarray()
    np.testing.assert_allclose(K, reference, rtol=1e-13, atol=1e-9)
    u_cg = prob.patch.assemble(
        run_graph(lambda: prob.solve(tf.constant(poisson.exact_kappa(prob.xb, prob.yb))))
    )
    u_rows = np.concatenate(MPI.COMM_WORLD.allgather(u_sparse)).reshape(N, N)
    np.testing.assert_allclose(u_rows, u_cg, rtol=0, atol=1e-9 * np.max(np.abs(u_cg)))

    weights = poisson.init_weights(seed=3)
    target = 0.9 * u_rows  # any data: both losses compare to the same global field

    def gradient(solve, mine_of):
        def build():
            w0 = tf.constant(weights)
            u = solve(am.mpi_bcast(w0))
            loss = am.mpi_allreduce(tf.reduce_sum((u - mine_of(target)) ** 2))
            return tf.gradients(loss, w0)[0]

        return MPI.COMM_WORLD.allreduce(run_graph(build))  # root's gradient, summed

    g_cg = gradient(
        lambda w: prob.solve(poisson.network_kappa(w, prob.xb, prob.yb)), prob.patch.local
    )
    g_sparse = gradient(
        lambda w: stripes.solve(lambda x, y: poisson.network_kappa(w, x, y), "GAMG", rtol=1e-13),
        lambda t: t.ravel()[stripes.ilower : stripes.iupper + 1],
    )
    np.testing.assert_allclose(g_sparse, g_cg, rtol=1e-7, atol=1e-9 * np.max(np.abs(g_cg)))


def test_fem_rows_across_ranks_are_the_whole_matrix_and_solve_it():
    """adcme_mpi.apps.fem (examples/fem_inverse.py): every rank's stripe of the P1 stiffness
    matrix (assembled from the triangles touching its nodes) put together is
    the matrix assembled whole on one process; it is symmetric; the solve
    matches SciPy's; the same at every rank count."""
    sparse_poisson_or_skip()
    from adcme_mpi.apps import fem

    problem = fem.FEMProblem(points=300)
    theta = fem.TRUE_THETA
    dense, u = run_graph(
        lambda: (
            problem.matrix(tf.constant(theta)).to_dense(),
            problem.solve(tf.constant(theta), "GAMG"),
        )
    )
    kappa_t = run_graph(lambda: problem.kappa(tf.constant(theta)))
    whole = problem.scipy_matrix(kappa_t)
    np.testing.assert_allclose(dense, whole.toarray(), rtol=1e-13, atol=1e-12)
    np.testing.assert_allclose(dense, dense.T, rtol=1e-13, atol=1e-12)
    load = np.concatenate(MPI.COMM_WORLD.allgather(problem.load))
    reference = scipy.sparse.linalg.spsolve(whole.tocsc(), load)
    u_all = np.concatenate(MPI.COMM_WORLD.allgather(u))
    np.testing.assert_allclose(u_all, reference, rtol=1e-9, atol=1e-12)
