"""P1 finite elements on an unstructured triangle mesh split across ranks as
row stripes (mpi_SparseTensor on PETSc), with an inverse problem for the
coefficient field (examples/fem_inverse.py runs it; its docstring says more)."""

import os

import numpy as np
import tensorflow as tf
from scipy.spatial import Delaunay

import adcme_mpi as am
from mpi4py import MPI

from .grid import pyplot_or_none, recording_fg, save_loss_figure

TRUE_THETA = np.array([0.3, -0.5, 0.8, 0.6])


def mesh(points, seed=0):
    """Nodes (boundary ones first on the edges, then scattered interior ones)
    and triangles, the same on every rank."""
    g = np.random.default_rng(seed)
    side = max(4, int(np.sqrt(points)) // 2)
    t = np.linspace(0, 1, side + 1)[:-1]
    edges = np.concatenate(
        [np.stack([t, 0 * t], 1), np.stack([1 + 0 * t, t], 1), np.stack([1 - t, 1 + 0 * t], 1)]
        + [np.stack([0 * t, 1 - t], 1)]
    )
    inside = g.uniform(0.02, 0.98, size=(points - len(edges), 2))
    nodes = np.concatenate([edges, inside])
    return nodes, Delaunay(nodes).simplices, len(edges)


class FEMProblem:
    """The stiffness matrix's rows of this rank's nodes, as an mpi_SparseTensor
    of kappa per triangle."""

    def __init__(self, points=2000, comm=None):
        self.comm = comm or MPI.COMM_WORLD
        rank, size = self.comm.Get_rank(), self.comm.Get_size()
        nodes, triangles, boundary = mesh(points)
        interior = np.arange(boundary, len(nodes))
        interior = interior[np.argsort(nodes[interior, 0], kind="stable")]  # stripes along x
        self.N = len(interior)
        number = np.full(len(nodes), -1)  # node -> unknown (-1: on the boundary)
        number[interior] = np.arange(self.N)
        self.bounds = bounds = np.linspace(0, self.N, size + 1).astype(int)  # rank r: rows
        self.ilower, self.iupper = int(bounds[rank]), int(bounds[rank + 1]) - 1
        self.nodes, self.triangles = nodes, triangles
        self.centroids = nodes[triangles].mean(axis=1)
        self.interior = interior  # every unknown's node, in row order
        self.mine = interior[self.ilower : self.iupper + 1]  # my nodes, in row order
        self._assembly(nodes, triangles, number)

    def _assembly(self, nodes, triangles, number):
        """For each (triangle, local row a, local column b) with row a one of
        mine and column b interior: the entry it feeds and its coefficient
        |T| grad(phi_a) . grad(phi_b), so that values = segment_sum(kappa_T *
        coefficient). The load vector: |T| / 3 per vertex."""
        p = nodes[triangles]  # (T, 3, 2)
        d1, d2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
        cross = d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0]
        area = 0.5 * np.abs(cross)
        # gradients of the three hat functions: the opposite edges, rotated
        opposite = np.stack([p[:, 2] - p[:, 1], p[:, 0] - p[:, 2], p[:, 1] - p[:, 0]], 1)
        grads = np.stack([-opposite[..., 1], opposite[..., 0]], -1) / cross[:, None, None]
        self.element = np.einsum("tad,tbd->tab", grads, grads) * area[:, None, None]
        self.number = number
        self.pairs, self.triangle_of, self.coefficient, self.entry = self.rows(
            self.ilower, self.iupper
        )
        load = np.zeros(len(nodes))
        np.add.at(load, triangles.ravel(), np.repeat(area / 3, 3))
        self.load = load[self.mine]

    def rows(self, lo, hi):
        """(pairs, triangle, coefficient, entry) of matrix rows lo..hi."""
        rows, cols, tri, coef = [], [], [], []
        for a in range(3):
            for b in range(3):
                i, j = self.number[self.triangles[:, a]], self.number[self.triangles[:, b]]
                keep = (i >= lo) & (i <= hi) & (j >= 0)
                rows.append(i[keep])
                cols.append(j[keep])
                tri.append(np.nonzero(keep)[0])
                coef.append(self.element[keep, a, b])
        pairs, entry = np.unique(
            np.stack([np.concatenate(rows), np.concatenate(cols)], 1), axis=0, return_inverse=True
        )
        return pairs, np.concatenate(tri), np.concatenate(coef), entry.ravel()

    def scipy_matrix(self, kappa_t):
        """The whole matrix on this process, for kappa per triangle (a check)."""
        import scipy.sparse

        pairs, tri, coef, entry = self.rows(0, self.N - 1)
        values = np.bincount(entry, weights=kappa_t[tri] * coef, minlength=len(pairs))
        return scipy.sparse.csr_matrix((values, (pairs[:, 0], pairs[:, 1])), (self.N, self.N))

    def _features(self):
        """(1, x, y, xy) at each triangle's centroid: log kappa = features @ theta."""
        x, y = self.centroids[:, 0], self.centroids[:, 1]
        return np.stack([np.ones_like(x), x, y, x * y], 1)

    def kappa(self, theta):
        return tf.exp(tf.linalg.matvec(tf.constant(self._features()), theta))

    def kappa_values(self, theta):
        """kappa per triangle in NumPy (for the figures)."""
        return np.exp(self._features() @ np.asarray(theta, dtype=np.float64))

    def matrix(self, theta):
        kappa_t = tf.gather(self.kappa(theta), self.triangle_of)
        values = tf.math.unsorted_segment_sum(
            kappa_t * self.coefficient, self.entry, len(self.pairs)
        )
        return am.mpi_SparseTensor(self.pairs, values, self.ilower, self.iupper, self.N)

    def solve(self, theta, solver=None):
        return self.matrix(theta).solve(tf.constant(self.load), solver=solver, rtol=1e-12)


def save_fem_figures(out, problem, theta_found, history):
    """<out>/fem_fields.png (the mesh with its interior nodes coloured by the
    rank owning their rows, the true and the recovered kappa per triangle) and
    <out>/fem_loss.png (loss per evaluation), as heat's figures. Rank 0 calls
    it; returns the paths, or [] without matplotlib (one line says so)."""
    plt = pyplot_or_none("fem")
    if plt is None:
        return []
    os.makedirs(out, exist_ok=True)
    paths = [os.path.join(out, "fem_fields.png"), os.path.join(out, "fem_loss.png")]
    x, y = problem.nodes[:, 0], problem.nodes[:, 1]
    size = problem.comm.Get_size()
    interior = problem.interior  # in row order
    owner = np.searchsorted(problem.bounds, np.arange(problem.N), side="right") - 1
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 4))
    axes[0].triplot(x, y, problem.triangles, lw=0.3, color="0.7")
    dots = axes[0].scatter(
        x[interior],
        y[interior],
        c=owner,
        s=6,
        cmap=plt.get_cmap("tab10", size),
        vmin=-0.5,
        vmax=size - 0.5,
    )
    fig.colorbar(dots, ax=axes[0], ticks=range(size), label="rank owning the row")
    axes[0].set_title(f"mesh: {len(problem.nodes)} nodes, {size} row stripes")
    kappas = [problem.kappa_values(TRUE_THETA), problem.kappa_values(theta_found)]
    low, high = min(k.min() for k in kappas), max(k.max() for k in kappas)
    for ax, kappa, title in zip(axes[1:], kappas, ["true kappa", "recovered kappa"]):
        shade = ax.tripcolor(x, y, problem.triangles, facecolors=kappa, vmin=low, vmax=high)
        ax.set_title(title)
        fig.colorbar(shade, ax=ax)
    for ax in axes:
        ax.set_aspect("equal")
    fig.savefig(paths[0], dpi=90, bbox_inches="tight")
    plt.close(fig)
    save_loss_figure(plt, paths[1], "fem", history)
    return paths


def run(points=2000, solver=None, maxiter=100, out=None):
    solver = solver or ("BoomerAMG" if am.petsc_info()["hypre"] else "GAMG")
    problem = FEMProblem(points)
    with tf.Graph().as_default() as g:
        u_true = problem.solve(tf.constant(TRUE_THETA), solver)
        with am.Session(graph=g) as sess:
            observed = sess.run(u_true)
    with tf.Graph().as_default() as g:
        theta0 = tf.compat.v1.placeholder(tf.float64, [4])
        theta = am.mpi_bcast(theta0)
        u = problem.solve(theta, solver)
        loss = am.mpi_allreduce(tf.reduce_sum((u - observed) ** 2)) * 1e6
        grad = tf.gradients(loss, theta0)[0]
        with am.Session(graph=g) as sess:
            fg, history = recording_fg(sess, loss, grad, theta0)
            loss0 = fg(np.zeros(4))[0]
            result = am.mpi_optimize(fg=fg, x0=np.zeros(4), options={"maxiter": maxiter})
    error = float(np.max(np.abs(result.x - TRUE_THETA)))
    if am.mpi_rank() == 0:
        rows = problem.comm.allgather(problem.iupper - problem.ilower + 1)
        print(
            f"fem: {len(problem.nodes)} nodes, {len(problem.triangles)} triangles, "
            f"{problem.N} unknowns as rows {rows} on {len(rows)} rank(s), solver {solver}; "
            f"inverse: loss {loss0:.3e} -> {result.fun:.3e} in {result.nit} iterations, "
            f"theta {np.round(result.x, 6).tolist()} (true {TRUE_THETA.tolist()}), "
            f"max error {error:.1e}"
        )
    else:
        problem.comm.allgather(problem.iupper - problem.ilower + 1)
    if out and am.mpi_rank() == 0:
        save_fem_figures(out, problem, result.x, history)
    return result, error
