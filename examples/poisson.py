"""Poisson problem div(kappa grad u) = f on [0,1]^2, u = 0 on the boundary,
ADCME's 5-point scheme with averaged kappa, on an m x n patch grid.

Manufactured solution u = x(1-x)y(1-y), kappa = 1 + x^2 + y^2. The linear
system is solved by a matrix-free distributed conjugate gradient (halo
exchange for the stencil, mpi_allreduce for dot products) inside one
tf.while_loop, preconditioned by block-Jacobi (default), two-level
(block-Jacobi plus a coarse space on the block corners: its iteration count
levels off as ranks are added) or multigrid (a geometric V-cycle across the
ranks: about the same iteration count for any grid and any number of ranks,
11 at N = 24 on 1-6 ranks). Its gradient is the adjoint method:
one more CG solve with the same (symmetric) operator, not differentiation
through CG iterations.

kappa can be a small neural network whose weights are broadcast from rank 0;
the inverse problem recovers kappa from u with mpi_optimize.

    mpiexec -n 4 python examples/poisson.py [--N 16 --maxiter 60 --out poisson_out]
        [--preconditioner block-jacobi|two-level|multigrid|none]
"""

import quiet  # noqa: F401  (first: TensorFlow without its start-up lines)
import argparse
import math
import os
import sys

import numpy as np
import tensorflow as tf
import adcme_mpi as am  # first: with a system MPI it picks the libmpi mpi4py loads
from mpi4py import MPI  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from grid import Patch, default_grid, recording_fg, save_figures  # noqa: E402


def exact_u(x, y):
    return x * (1 - x) * y * (1 - y)


def exact_kappa(x, y):
    return 1 + x**2 + y**2


def source(x, y):
    """f = div(kappa grad u) for the manufactured pair."""
    ux, uy = (1 - 2 * x) * y * (1 - y), x * (1 - x) * (1 - 2 * y)
    lap = -2 * y * (1 - y) - 2 * x * (1 - x)
    return exact_kappa(x, y) * lap + 2 * x * ux + 2 * y * uy


def dst1(x):
    """Orthonormal DST-I along the last axis (its own inverse), via one FFT of
    the odd extension [0, x, 0, -reversed(x)] of length 2 (p + 1)."""
    p = x.shape[-1]
    zero = tf.zeros_like(x[..., :1])
    extended = tf.concat([zero, x, zero, -tf.reverse(x, [-1])], axis=-1)
    spectrum = tf.signal.fft(tf.complex(extended, tf.zeros_like(extended)))
    return -0.5 * tf.math.imag(spectrum[..., 1 : p + 1]) * np.sqrt(2.0 / (p + 1))


class BlockJacobi:
    """Block-Jacobi preconditioner: on each rank, the exact inverse of the
    5-point Laplacian on its own block (zero outside it), scaled by 1 / the
    block's mean kappa. Applied with two fast sine transforms per axis, local
    (no communication); symmetric positive definite, so PCG and its adjoint
    solve stay exact. Iterations then grow with the number of blocks, not
    with the grid size N; TwoLevel adds the coarse space that stops that."""

    def __init__(self, rows, cols, h):
        i, j = np.arange(1, rows + 1), np.arange(1, cols + 1)
        lam = (4 / h**2) * (
            np.sin(i * np.pi / (2 * (rows + 1)))[:, None] ** 2
            + np.sin(j * np.pi / (2 * (cols + 1)))[None, :] ** 2
        )
        self.inverse_eigenvalues_t = (1.0 / lam).T  # (cols, rows), as the transforms leave it

    def __call__(self, r, kappa_mean):
        spectral = dst1(tf.transpose(dst1(r)))  # (cols, rows): rows transformed last
        spectral = spectral * self.inverse_eigenvalues_t
        return dst1(tf.transpose(dst1(spectral))) / kappa_mean


def corner_hats(patch):
    """The coarse space of the two-level preconditioner: bilinear hat
    functions on the grid of block corners, one per interior corner (the
    boundary ones are zero there). Returns this block's (and its one-cell
    border's) values of every hat that is nonzero there, as numpy arrays
    (count, rows + 2, cols + 2), their global indices, and how many there are
    in all. Positions are in block units: node i of block bi sits at
    bi + (i + 0.5) / rows."""
    p = patch
    t_row = p.bi + (np.arange(-1, p.rows + 1) + 0.5) / p.rows
    t_col = p.bj + (np.arange(-1, p.cols + 1) + 0.5) / p.cols
    hats, index = [], []
    # a hat reaches this block or its border only from the corners within one block
    for vi in range(max(1, p.bi - 1), min(p.m - 1, p.bi + 2) + 1):
        for vj in range(max(1, p.bj - 1), min(p.n - 1, p.bj + 2) + 1):
            hat_row = np.maximum(0, 1 - np.abs(t_row - vi))
            hat = np.outer(hat_row, np.maximum(0, 1 - np.abs(t_col - vj)))
            if hat.any():
                hats.append(hat)
                index.append((vi - 1) * (p.n - 1) + (vj - 1))
    count = (p.m - 1) * (p.n - 1)
    return np.array(hats).reshape(-1, p.rows + 2, p.cols + 2), np.array(index, int), count


class TwoLevel:
    """Block-Jacobi plus a coarse correction: M^-1 r = B^-1 r + Phi A0^-1 Phi^T r
    with Phi the bilinear hats on the block corners (corner_hats) and
    A0 = Phi^T K Phi (Galerkin), so the iteration count stops growing with the
    number of blocks. Symmetric positive definite, so PCG and its adjoint
    solve stay exact. A0 is assembled once per solve (one allreduce of a
    corners x corners matrix); each iteration's Phi^T r rides in the
    allreduce CG already does for its dot products."""

    def __init__(self, patch):
        self.block = BlockJacobi(patch.rows, patch.cols, patch.h)
        hats, self.index, self.count = corner_hats(patch)
        self.hats_padded = hats
        self.hats = hats[:, 1:-1, 1:-1]  # on this block's own nodes

    # On an m x n grid with m, n >= 2 (see PoissonProblem) every block has a
    # corner inside the domain, so each rank holds at least one hat.
    def coarse_matrix(self, problem, faces):
        """A0 = Phi^T K Phi, summed over ranks."""
        k_hats = problem.stencil(tf.constant(self.hats_padded), faces)  # K phi_v, this block
        local = tf.einsum("uij,vij->uv", tf.constant(self.hats), k_hats)
        pairs = np.array([(u, v) for u in self.index for v in self.index])
        local = tf.scatter_nd(pairs, tf.reshape(local, [-1]), [self.count, self.count])
        return am.mpi_allreduce(local, comm=problem.comm)

    def restrict(self, r):
        """This rank's part of Phi^T r, as a vector over all corners."""
        part = tf.einsum("uij,ij->u", tf.constant(self.hats), r)
        return tf.scatter_nd(self.index[:, None], part, [self.count])

    def prolong(self, y0):
        return tf.einsum("u,uij->ij", tf.gather(y0, self.index), tf.constant(self.hats))


def halved(size):
    """Cells per axis one level coarser: half, rounded up (75 -> 38: coarse
    cells of 75/38 fine widths, not a nested factor), so every level coarsens
    by about 2 whatever the prime factors of the block."""
    return (size + 1) // 2


def linear_interpolation(fine, coarse, reach=0, ghosts=1):
    """1-D linear interpolation between cell centres, from `coarse` cells with
    `ghosts` ghost cells each side to `fine` cells covering the same interval,
    with `reach` more fine cells each side (the neighbours' cells a
    restriction needs, or a smoother computes on): a (fine + 2 reach) x
    (coarse + 2 ghosts) NumPy matrix. A weight on a coarse cell beyond the
    ghosts is dropped: that cell's owner collects it (interpolation_ghosts
    says how many ghosts leave none out)."""
    ratio = fine / coarse  # coarse width in fine widths, at most 2
    weights = np.zeros((fine + 2 * reach, coarse + 2 * ghosts))
    for i in range(-reach, fine + reach):
        s = (i + 0.5) / ratio - 0.5  # from coarse cell 0's centre, in coarse widths
        j = math.floor(s)
        for cell, w in ((j, 1 - (s - j)), (j + 1, s - j)):
            if -ghosts <= cell < coarse + ghosts and w != 0:
                weights[i + reach, cell + ghosts] = w
    return weights


def interpolation_ghosts(fine, coarse, reach):
    """How many coarse ghost cells each side interpolation to `reach` fine
    cells beyond the block needs (the farthest one lies below coarse cell -g)."""
    return -math.floor((0.5 - reach) * coarse / fine - 0.5)


def restriction_reach(fine, coarse):
    """How many of a neighbour's fine cells interpolate from this block's
    coarse cells: those within one coarse width of cell 0's centre."""
    ratio = fine / coarse
    return math.ceil(0.5 * (ratio + 1)) - 1


def cell_average(fine, coarse):
    """A coarse x fine NumPy matrix: the mean over the fine cells whose centres
    lie in each coarse cell (for kappa on the coarse levels)."""
    owner = np.floor((np.arange(fine) + 0.5) * coarse / fine).astype(int)
    average = np.zeros((coarse, fine))
    average[owner, np.arange(fine)] = 1.0
    return average / average.sum(axis=1, keepdims=True)


def ring(x, cells):
    """x without `cells` rows and columns each side (last two axes)."""
    return x[..., cells:-cells, cells:-cells] if cells else x


def sparse(matrix, dtype):
    index = np.argwhere(matrix)
    return tf.sparse.SparseTensor(index, tf.constant(matrix[tuple(index.T)], dtype), matrix.shape)


def two_sided(left, x, right):
    """left @ x @ right^T with sparse left and right (NumPy): the 2-D transfer
    as one 1-D transfer per axis."""
    x = tf.sparse.sparse_dense_matmul(sparse(left, x.dtype), x)
    return tf.sparse.sparse_dense_matmul(x, sparse(right, x.dtype), adjoint_b=True)


def _along(x, axis, start, length):
    return x[start : start + length] if axis == 0 else x[:, start : start + length]


class Multigrid:
    """Geometric multigrid V-cycle: CG's iteration count then stays about the
    same for any grid size and any number of ranks. Every rank coarsens its
    own block, each axis to half its cells rounded up (so a 300-cell block
    goes 300 > 150 > 75 > 38 > 19 > 10 > 5 > 3 > 2 > 1, each step about 2:
    coarsening by a block's prime factors, 3 and 5 for 300, took 20-24 CG
    iterations instead of 12), down to one cell per rank; one allreduce then
    gathers those cells into the whole coarse grid on every rank, which is
    coarsened the same way down to at most DENSE cells and solved by
    Cholesky. A coarse level's cells are uniform and cover the same block as
    the fine ones (38 cells of 75/38 fine widths). Levels below the finest
    are rediscretised (kappa averaged over the fine cells centred in a coarse
    cell; each axis keeps its own spacing; the Dirichlet boundary where it
    really is, (H + h) / 2 from the first coarse centre, both in the
    operator and in the interpolation). Transfer: linear interpolation
    between coarse cell centres along each axis, restriction its transpose,
    damped Jacobi before and after: symmetric positive definite, so PCG and
    its adjoint solve stay exact."""

    DENSE = 64
    SWEEPS, OMEGA = 2, 0.8
    # A level of at least RING cells a side smooths on its neighbours' cells
    # too: one halo exchange of b, RING wide, lets the pre-smoothing sweeps
    # and the residual run without exchanging (each sweep is valid one cell
    # less far out), and one exchange of the coarse correction, wide enough
    # to interpolate to SWEEPS rings, lets the post-smoothing run without
    # either: 2 exchanges per level, not 6 (each a latency across a network)
    RING = SWEEPS + 1

    def __init__(self, problem, coarsen_blocks=True):
        """coarsen_blocks=False gathers the finest grid at once (for timing the
        gathered grid's V-cycle on its own: benchmarks/scaling.py --mode vcycle)."""
        p = self.patch = problem.patch
        self.comm = problem.comm
        self.levels = self._coarsening(p.rows, p.cols, p.h, p.h, gathered=not coarsen_blocks)
        self.levels = self.levels if coarsen_blocks else self.levels[:1]
        last = self.levels[-1]
        self.gathered_levels = self._coarsening(
            p.m * last["rows"], p.n * last["cols"], last["hr"], last["hc"], gathered=True
        )

    def halo_exchanges(self, level):
        """Halo exchanges per V-cycle on a distributed level: on rings, b's and
        the coarse correction's; otherwise one before every sweep but the first,
        the residual, its restriction and the coarse correction."""
        if "reach" not in level:  # the last: it hands its cells to the gathered grid
            return 0
        return 2 if level["on_rings"] else 2 * self.SWEEPS + 2

    def _coarsening(self, rows, cols, hr, hc, gathered):
        """The levels from a rows x cols block (spacings hr, hc) down to one
        cell, or to at most DENSE cells for the gathered grid. Each level but
        the last keeps its transfer to the next as NumPy matrices per axis
        (made into graph constants where they are used)."""
        levels = [dict(rows=rows, cols=cols, hr=hr, hc=hc)]
        while rows * cols > (self.DENSE if gathered else 1):
            fine = levels[-1]
            pairs = (fine["rows"], halved(rows)), (fine["cols"], halved(cols))
            reach = max(restriction_reach(*pair) for pair in pairs)
            ghosts = max(interpolation_ghosts(*pair, self.SWEEPS) for pair in pairs)
            coarse_side = min(coarse for _, coarse in pairs)
            on_rings = not gathered and min(rows, cols) >= self.RING and coarse_side >= ghosts
            fine.update(
                reach=reach,
                on_rings=on_rings,
                ghosts=ghosts if on_rings else 1,
                interpolate=[
                    linear_interpolation(*pair, *((self.SWEEPS, ghosts) if on_rings else ()))
                    for pair in pairs
                ],
                restrict=[linear_interpolation(*pair, reach).T for pair in pairs],
                average=[cell_average(*pair) for pair in pairs],
            )
            (_, rows), (_, cols) = pairs
            hr, hc = hr * fine["rows"] / rows, hc * fine["cols"] / cols
            levels.append(dict(rows=rows, cols=cols, hr=hr, hc=hc))
        return levels

    def _halo(self, level, u, width, fill):
        if level["gathered"]:  # the whole grid is here: only the physical boundary's ghosts
            pad = [[0, 0]] * (len(u.shape) - 2) + [[width, width]] * 2
            return tf.pad(u, pad, constant_values=fill)
        p = self.patch
        return am.mpi_halo_exchange(u, p.m, p.n, fill_value=fill, width=width, comm=self.comm)

    def _apply(self, level, u):
        """This level's operator, -div(kappa grad u), with its spacings."""
        return self._stencil(level, self._halo(level, u, 1, 0.0), level["faces"])

    def _stencil(self, level, up, faces):
        """The operator on the cells of `up` but its outermost ring."""
        e, w, n, s = faces
        c = up[..., 1:-1, 1:-1]
        across = e * (c - up[..., 1:-1, 2:]) + w * (c - up[..., 1:-1, :-2])
        along = n * (c - up[..., 2:, 1:-1]) + s * (c - up[..., :-2, 1:-1])
        return across / level["hc"] ** 2 + along / level["hr"] ** 2

    def _faces(self, level, kappa):
        """Face coefficients from cell kappa: the mean of the two cells, or the
        cell's own value at the physical boundary."""
        kp = self._halo(level, kappa, 1, -1.0)
        h = self.patch.h

        def face(neighbour, spacing):
            # the Dirichlet boundary lies (H + h) / 2 from a coarse cell's centre, not H
            boundary = kappa * (2 * spacing / (spacing + h))
            return tf.where(neighbour < 0, boundary, (kappa + neighbour) / 2)

        hr, hc = level["hr"], level["hc"]
        return (
            face(kp[1:-1, 2:], hc),
            face(kp[1:-1, :-2], hc),
            face(kp[2:, 1:-1], hr),
            face(kp[:-2, 1:-1], hr),
        )

    def _gather(self, block):
        """Every rank's block of the last distributed level into the whole
        grid, on every rank (one allreduce)."""
        p, (r, c) = self.patch, block.shape.as_list()
        placed = tf.pad(block, [[p.bi * r, (p.m - p.bi - 1) * r], [p.bj * c, (p.n - p.bj - 1) * c]])
        return am.mpi_allreduce(placed, comm=self.comm)

    def _boundary(self, level):
        """Which sides of this level's block are the physical boundary: top,
        bottom, left, right."""
        if level["gathered"]:
            return True, True, True, True
        p = self.patch
        return p.bi == 0, p.bi == p.m - 1, p.bj == 0, p.bj == p.n - 1

    def _ghost_ratio(self, spacing):
        """A coarse cell's centre lies (H + h) / 2 from the Dirichlet boundary
        (h: the finest spacing): linear interpolation through 0 there puts
        -ratio times the first cell's value at the ghost cell, H beyond it."""
        return (spacing - self.patch.h) / (spacing + self.patch.h)

    def _boundary_ghosts(self, level, padded, transpose=False, ghosts=1):
        """G: the boundary's ghost cells of a padded coarse array from its first
        cells (transpose=False; its other ghosts are the neighbours' cells;
        with more than one ghost cell a side, the ones farther out are zero:
        they only interpolate to cells beyond the boundary), or G^T: a padded
        array of contributions folded back onto the block (transpose=True;
        ghosts of neighbours dropped, they count there)."""
        top, bottom, left, right = self._boundary(level)
        for axis, (first, last), spacing in (
            (0, (top, bottom), level["hr"]),
            (1, (left, right), level["hc"]),
        ):
            ratio = -self._ghost_ratio(spacing)
            size = padded.shape[axis] - 2 * ghosts
            lo, inner, hi = (
                _along(padded, axis, 0, ghosts),
                _along(padded, axis, ghosts, size),
                _along(padded, axis, size + ghosts, ghosts),
            )
            if transpose:
                if first:
                    inner = tf.concat(
                        [ratio * lo + _along(inner, axis, 0, 1), _along(inner, axis, 1, size - 1)],
                        axis,
                    )
                if last:
                    inner = tf.concat(
                        [
                            _along(inner, axis, 0, size - 1),
                            _along(inner, axis, size - 1, 1) + ratio * hi,
                        ],
                        axis,
                    )
                padded = inner
            else:
                farther = tf.zeros_like(_along(lo, axis, 0, ghosts - 1))
                if first:
                    lo = tf.concat([farther, ratio * _along(inner, axis, 0, 1)], axis)
                if last:
                    hi = tf.concat([ratio * _along(inner, axis, size - 1, 1), farther], axis)
                padded = tf.concat([lo, inner, hi], axis)
        return padded

    def _own(self, whole, shape):
        p, r, c = self.patch, shape["rows"], shape["cols"]
        return whole[p.bi * r : (p.bi + 1) * r, p.bj * c : (p.bj + 1) * c]

    def prepare(self, faces):
        """Per solve: every level's operator from the fine level's faces; returns M^-1."""
        e, w, n, s = faces
        finest = dict(self.levels[0], gathered=False, faces=faces)
        finest["diag"] = (e + w + n + s) / self.patch.h**2
        plan = [finest]
        kappa = (e + w + n + s) / 4  # a cell value of kappa on the finest level
        coarser = [(False, shape) for shape in self.levels[1:]]
        coarser += [(True, shape) for shape in self.gathered_levels]
        for gathered, shape in coarser:
            before = plan[-1]
            level = dict(shape, gathered=gathered)
            if gathered and not before["gathered"]:
                kappa = self._gather(kappa)
            else:
                along_rows, along_cols = before["average"]
                kappa = two_sided(along_rows, kappa, along_cols)
            if gathered or shape is not self.levels[-1]:  # the last distributed one only hands on
                level["faces"] = e, w, n, s = self._faces(level, kappa)
                level["diag"] = (e + w) / level["hc"] ** 2 + (n + s) / level["hr"] ** 2
            plan.append(level)
        for level in plan:
            if level.get("on_rings"):
                self._prepare_rings(level)
        bottom = plan[-1]
        cells = bottom["rows"] * bottom["cols"]
        basis = tf.reshape(
            tf.eye(cells, dtype=kappa.dtype), [cells, bottom["rows"], bottom["cols"]]
        )
        bottom["cholesky"] = tf.linalg.cholesky(
            tf.reshape(self._apply(bottom, basis), [cells, cells])
        )
        return lambda r: self._cycle(plan, 0, r)

    def _prepare_rings(self, level):
        """The level's faces and diagonal on RING rings of its neighbours'
        cells too (zero faces, unit diagonal beyond the physical boundary),
        and where the domain is: four halo exchanges per solve."""
        level["ring_faces"] = [self._halo(level, f, self.RING, 0.0) for f in level["faces"]]
        e, w, n, s = level["ring_faces"]
        diag = (e + w) / level["hc"] ** 2 + (n + s) / level["hr"] ** 2
        level["inside"] = tf.cast(diag > 0, diag.dtype)
        level["ring_diag"] = diag + (1 - level["inside"])

    def _sweep_on_rings(self, level, x, b, rings):
        """One damped Jacobi sweep from x on `rings` rings to rings - 1 (b on
        RING rings). Beyond the physical boundary x stays zero: b, the faces
        and so the step are zero there."""
        out = self.RING - rings + 1
        faces = [ring(f, out) for f in level["ring_faces"]]
        step = (ring(b, out) - self._stencil(level, x, faces)) / ring(level["ring_diag"], out)
        return ring(x, 1) + self.OMEGA * step

    def _smooth(self, level, x, b):
        for _ in range(self.SWEEPS):
            residual = b if x is None else b - self._apply(level, x)
            step = self.OMEGA * residual / level["diag"]
            x = step if x is None else x + step
        return x

    def _cycle(self, plan, i, b):
        """One V-cycle from level i down, for the levels `plan` (prepare's)."""
        level = plan[i]
        if i == len(plan) - 1:
            y = tf.linalg.cholesky_solve(level["cholesky"], tf.reshape(b, [-1, 1]))
            return tf.reshape(y, tf.shape(b))
        coarse = plan[i + 1]
        if coarse["gathered"] and not level["gathered"]:  # the same cells, on every rank
            return self._own(self._cycle(plan, i + 1, self._gather(b)), level)
        reach = level["reach"]
        if level["on_rings"]:
            b_rings = self._halo(level, b, self.RING, 0.0)
            x = self.OMEGA * b_rings / level["ring_diag"]  # the first sweep from x = 0
            for rings in range(self.RING, self.RING - self.SWEEPS + 1, -1):
                x = self._sweep_on_rings(level, x, b_rings, rings)
            # x is on SWEEPS rings now: the residual on one, then on `reach`
            faces = [ring(f, self.RING - 1) for f in level["ring_faces"]]
            residual = ring(b_rings, self.RING - 1) - self._stencil(level, x, faces)
            fine = ring(residual, 1 - reach)
        else:
            x = self._smooth(level, None, b)
            fine = self._halo(level, b - self._apply(level, x), reach, 0.0)
        # the transpose of interpolation, over this block's fine cells and the
        # neighbours' within reach; divided by the fine cells per coarse cell
        along_rows, along_cols = level["restrict"]
        scale = (level["rows"] / coarse["rows"]) * (level["cols"] / coarse["cols"])
        restricted = two_sided(along_rows, fine, along_cols) / scale
        restricted = self._boundary_ghosts(coarse, restricted, transpose=True)
        ghosts = level["ghosts"]
        ep = self._halo(coarse, self._cycle(plan, i + 1, restricted), ghosts, 0.0)
        ep = self._boundary_ghosts(coarse, ep, ghosts=ghosts)
        along_rows, along_cols = level["interpolate"]
        x = x + two_sided(along_rows, ep, along_cols)
        if not level["on_rings"]:
            return self._smooth(level, x, b)
        x = x * ring(level["inside"], self.RING - self.SWEEPS)  # zero beyond the boundary
        for rings in range(self.SWEEPS, 0, -1):
            x = self._sweep_on_rings(level, x, b_rings, rings)
        return x


class PoissonProblem:
    def __init__(
        self, N=16, grid=None, comm=None, tol=1e-12, maxiter=None, preconditioner="block-jacobi"
    ):
        comm = comm or MPI.COMM_WORLD
        m, n = grid or default_grid(comm.Get_size())
        self.patch = p = Patch(N, m, n, comm)
        self.comm, self.tol, self.maxiter = comm, tol, maxiter or 10 * N
        if preconditioner == "two-level" and min(m, n) == 1:
            preconditioner = "block-jacobi"  # a 1 x n grid has no interior block corners
        self.preconditioner = {
            "block-jacobi": lambda: BlockJacobi(p.rows, p.cols, p.h),
            "two-level": lambda: TwoLevel(p),
            "multigrid": lambda: Multigrid(self),
            None: lambda: None,
        }[preconditioner]()
        self.x, self.y = p.coordinates()
        self.xb, self.yb = p.coordinates(border=1)  # nodes plus one layer (kappa only)
        self.f = source(self.x, self.y)

    # ---- the operator K = -div(kappa grad .) (symmetric positive definite) ----
    def faces(self, kappa_b):
        """Face coefficients (averaged kappa) from kappa on nodes plus border."""
        c = kappa_b[1:-1, 1:-1]
        return (
            (c + kappa_b[1:-1, 2:]) / 2,
            (c + kappa_b[1:-1, :-2]) / 2,
            (c + kappa_b[2:, 1:-1]) / 2,
            (c + kappa_b[:-2, 1:-1]) / 2,
        )

    def apply(self, u, faces):
        p = self.patch
        return self.stencil(
            am.mpi_halo_exchange(u, p.m, p.n, fill_value=0.0, comm=self.comm), faces
        )

    def stencil(self, up, faces):
        """K u from u padded with its neighbours' values (local arithmetic)."""
        e, w, nn, s = faces
        c = up[..., 1:-1, 1:-1]
        return (
            e * (c - up[..., 1:-1, 2:])
            + w * (c - up[..., 1:-1, :-2])
            + nn * (c - up[..., 2:, 1:-1])
            + s * (c - up[..., :-2, 1:-1])
        ) / self.patch.h**2

    def dot(self, a, b):
        return am.mpi_allreduce(tf.reduce_sum(a * b), comm=self.comm)

    def cg(self, faces, b):
        """Distributed (preconditioned) CG for K x = b from x = 0, to
        ||r|| <= tol ||b||. One allreduce per iteration carries both <r, z>
        and <r, r>."""
        precondition = self.preconditioner
        kappa_mean = tf.stop_gradient(tf.reduce_mean(faces[0]))
        if isinstance(precondition, Multigrid):
            coarse = None
            apply_m = precondition.prepare(faces)
        elif isinstance(precondition, TwoLevel):
            coarse = precondition
            chol = tf.linalg.cholesky(coarse.coarse_matrix(self, faces))
            apply_m = lambda r: coarse.block(r, kappa_mean)  # noqa: E731
        else:
            coarse = None
            if precondition is None:
                apply_m = lambda r: r  # noqa: E731
            else:
                apply_m = lambda r: precondition(r, kappa_mean)  # noqa: E731

        def precondition_and_sum(r):
            """z = M^-1 r and the global [<r, z>, <r, r>] in one allreduce.
            Two-level: z = B^-1 r + Phi y0 with y0 = A0^-1 Phi^T r, so
            <r, z> = <r, B^-1 r> + <Phi^T r, y0> and Phi^T r joins the same
            allreduce."""
            z = apply_m(r)
            local = tf.stack([tf.reduce_sum(r * z), tf.reduce_sum(r * r)])
            if coarse is None:
                return z, am.mpi_allreduce(local, comm=self.comm)
            sums = am.mpi_allreduce(tf.concat([local, coarse.restrict(r)], 0), comm=self.comm)
            r0 = sums[2:]
            y0 = tf.linalg.cholesky_solve(chol, r0[:, None])[:, 0]
            return z + coarse.prolong(y0), tf.stack([sums[0] + tf.reduce_sum(r0 * y0), sums[1]])

        z, sums = precondition_and_sum(b)
        stop2 = self.tol**2 * sums[1]

        def cond(k, x, r, p, rz, rr):
            return tf.logical_and(k < self.maxiter, rr > stop2)

        def body(k, x, r, p, rz, rr):
            Kp = self.apply(p, faces)
            alpha = rz / self.dot(p, Kp)
            x = x + alpha * p
            r = r - alpha * Kp
            z, sums = precondition_and_sum(r)
            return k + 1, x, r, z + (sums[0] / rz) * p, sums[0], sums[1]

        zero = tf.zeros_like(b)
        # the token-threading loop keeps its MPI ops in program order
        loop = am.ordering.while_loop(cond, body, [tf.constant(0), zero, b, z, sums[0], sums[1]])
        self.iterations = loop[0]
        return loop[1]

    def solve(self, kappa_b):
        """u with K(kappa) u = -f; gradient w.r.t. kappa by the adjoint method."""
        b = tf.constant(-self.f)

        @am.ordering.custom_gradient  # tf.custom_gradient that keeps MPI ops in order
        def solve_with_adjoint(kappa_b):
            faces = self.faces(kappa_b)
            u = self.cg(faces, b)

            def grad(du):
                lam = self.cg(faces, du)  # K is symmetric: K^T lam = du
                # d/dkappa <du, K^-1 b> = -<lam, (dK/dkappa) u>: a local derivative,
                # so the MPI results it uses are constants to it (stop_gradient;
                # MPI ops are linked by their ordering token, see adcme_mpi.ordering)
                p = self.patch
                up = tf.stop_gradient(am.mpi_halo_exchange(u, p.m, p.n, comm=self.comm))
                inner = -tf.reduce_sum(
                    tf.stop_gradient(lam) * self.stencil(up, self.faces(kappa_b))
                )
                return tf.gradients(inner, kappa_b)[0]

            return u, grad

        return solve_with_adjoint(kappa_b)


# ---- a small neural network for kappa; weights broadcast from rank 0 ----
LAYERS = [2, 10, 1]


def n_weights():
    return sum(a * b + b for a, b in zip(LAYERS[:-1], LAYERS[1:]))


def init_weights(seed=0):
    rng = np.random.default_rng(seed)
    parts = []
    for a, b in zip(LAYERS[:-1], LAYERS[1:]):
        parts += [rng.standard_normal(a * b) * np.sqrt(1.0 / a), np.zeros(b)]
    return np.concatenate(parts)


def network_kappa(weights, x, y):
    """kappa(x, y) = 1 + softplus(MLP(x, y)) > 1, evaluated at the arrays x, y."""
    h = tf.stack([tf.reshape(tf.constant(x), [-1]), tf.reshape(tf.constant(y), [-1])], axis=1)
    k = 0
    for i, (a, b) in enumerate(zip(LAYERS[:-1], LAYERS[1:])):
        W = tf.reshape(weights[k : k + a * b], [a, b])
        c = weights[k + a * b : k + a * b + b]
        k += a * b + b
        h = tf.matmul(h, W) + c
        if i < len(LAYERS) - 2:
            h = tf.tanh(h)
    return tf.reshape(1.0 + tf.nn.softplus(h), x.shape)


def build_inverse(problem, observed):
    weights0 = tf.compat.v1.placeholder(tf.float64, [n_weights()])
    weights = am.mpi_bcast(weights0, comm=problem.comm)
    u = problem.solve(network_kappa(weights, problem.xb, problem.yb))
    loss = am.mpi_sum(
        tf.reduce_sum((u - observed) ** 2) / problem.patch.N**2 * 1e4, comm=problem.comm
    )
    return weights0, loss, tf.gradients(loss, weights0)[0]


def run(N=16, out=None, maxiter=200, verbose=False, preconditioner="block-jacobi"):
    problem = PoissonProblem(N=N, preconditioner=preconditioner)
    p = problem.patch
    with tf.Graph().as_default() as g:
        u = problem.solve(tf.constant(exact_kappa(problem.xb, problem.yb)))
        with am.Session(graph=g) as sess:
            u_true, iters = sess.run([u, problem.iterations])
    err = np.max(np.abs(p.assemble(u_true) - p.assemble(exact_u(problem.x, problem.y))))
    with tf.Graph().as_default() as g:
        weights0, loss, grad = build_inverse(problem, tf.constant(u_true))
        kappa_net = network_kappa(weights0, problem.x, problem.y)
        with am.Session(graph=g) as sess:
            fg, history = recording_fg(sess, loss, grad, weights0)
            result = am.mpi_optimize(
                fg=fg,
                x0=init_weights(),
                method="L-BFGS-B",
                verbose=verbose,
                options={"maxiter": maxiter},
            )
            kappa_found = sess.run(kappa_net, {weights0: result.x})
    kappa_true = exact_kappa(problem.x, problem.y)
    kappa_err = float(
        p.comm.allreduce(np.max(np.abs(kappa_found - kappa_true) / kappa_true), op=MPI.MAX)
    )
    summary = {
        "solution_error": float(err),
        "cg_iterations": int(iters),
        "loss0": float(problem.comm.bcast(history[0])),
        "loss": float(result.fun),
        "kappa_rel_error": kappa_err,
        "iterations": int(result.nit),
    }
    if p.rank == 0:
        print(
            f"poisson: N={N} grid={p.m}x{p.n} CG iterations {iters} "
            f"({preconditioner or 'no preconditioner'}), max |u - u_exact| = "
            f"{err:.2e}; inverse: loss {history[0]:.3e} -> {result.fun:.3e} in {result.nit} "
            f"iterations, max relative kappa error {kappa_err:.2e}"
        )
    if out:
        fields = [p.assemble(u_true), p.assemble(kappa_true), p.assemble(kappa_found)]
        if p.rank == 0:
            summary["figures"] = save_figures(
                out,
                "poisson",
                fields,
                ["u (CG solution)", "true kappa", "recovered kappa (network)"],
                history,
            )
    return summary


if __name__ == "__main__":
    tf.compat.v1.disable_eager_execution()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--N", type=int, default=16)
    parser.add_argument("--out", default="poisson_out")
    parser.add_argument("--maxiter", type=int, default=60)
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument(
        "--preconditioner",
        default="block-jacobi",
        choices=["block-jacobi", "two-level", "multigrid", "none"],
    )
    args = parser.parse_args()
    preconditioner = None if args.preconditioner == "none" else args.preconditioner
    run(args.N, args.out, args.maxiter, args.verbose, preconditioner)
    am.mpi_finalize()
