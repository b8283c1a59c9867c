"""Preconditioners for the distributed Poisson operator K = -div(kappa grad .)
on a block grid, one interface: built once per problem, `prepare(faces)` once
per solve (the operator's face coefficients) returns M^-1 for
adcme_mpi.linalg.pcg. All are symmetric positive definite, so PCG and its
adjoint solve stay exact.

- `BlockJacobi`: each block's exact inverse of the Laplacian (fast sine
  transforms, no communication); iterations grow with the number of blocks.
- `TwoLevel`: block-Jacobi plus a coarse space on the block corners; the
  iteration count levels off as ranks are added.
- `Multigrid`: a geometric V-cycle across the ranks; about the same
  iteration count for any grid and any number of ranks.
"""

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from .. import linalg
from .transfer import (
    along,
    cell_average,
    halved,
    interpolation_ghosts,
    linear_interpolation,
    restriction_reach,
    ring,
    two_sided,
)


class Preconditioner:
    """The interface: `prepare(faces)` per solve returns M^-1 for linalg.pcg
    (a callable r -> z, a linalg.SplitPreconditioner, or None for none)."""

    def prepare(self, faces):
        raise NotImplementedError


class Identity(Preconditioner):
    """No preconditioner."""

    def prepare(self, faces):
        return None


def dst1(x):
    """Orthonormal DST-I along the last axis (its own inverse), via one FFT of
    the odd extension [0, x, 0, -reversed(x)] of length 2 (p + 1)."""
    p = x.shape[-1]
    zero = tf.zeros_like(x[..., :1])
    extended = tf.concat([zero, x, zero, -tf.reverse(x, [-1])], axis=-1)
    spectrum = tf.signal.fft(tf.complex(extended, tf.zeros_like(extended)))
    return -0.5 * tf.math.imag(spectrum[..., 1 : p + 1]) * np.sqrt(2.0 / (p + 1))


def mean_kappa(faces):
    """The block's mean face coefficient, a constant to the gradient."""
    return tf.stop_gradient(tf.reduce_mean(faces[0]))


class BlockJacobi(Preconditioner):
    """Block-Jacobi preconditioner: on each rank, the exact inverse of the
    5-point Laplacian on its own block (zero outside it), scaled by 1 / the
    block's mean kappa. Applied with two fast sine transforms per axis, local
    (no communication). Iterations then grow with the number of blocks, not
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

    def prepare(self, faces):
        kappa_mean = mean_kappa(faces)
        return lambda r: self(r, kappa_mean)


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


class TwoLevel(Preconditioner):
    """Block-Jacobi plus a coarse correction: M^-1 r = B^-1 r + Phi A0^-1 Phi^T r
    with Phi the bilinear hats on the block corners (corner_hats) and
    A0 = Phi^T K Phi (Galerkin), so the iteration count stops growing with the
    number of blocks. A0 is assembled once per solve (one allreduce of a
    corners x corners matrix); each iteration's Phi^T r rides in the
    allreduce CG already does for its dot products (a SplitPreconditioner).
    Needs an m x n grid with m, n >= 2: then every block has a corner inside
    the domain, and each rank holds at least one hat."""

    def __init__(self, problem):
        patch = problem.patch
        self.problem = problem
        self.block = BlockJacobi(patch.rows, patch.cols, patch.h)
        hats, self.index, self.count = corner_hats(patch)
        self.hats_padded = hats
        self.hats = hats[:, 1:-1, 1:-1]  # on this block's own nodes

    def coarse_matrix(self, faces):
        """A0 = Phi^T K Phi, summed over ranks."""
        problem = self.problem
        k_hats = problem.stencil(tf.constant(self.hats_padded), faces)  # K phi_v, this block
        local = tf.einsum("uij,vij->uv", tf.constant(self.hats), k_hats)
        pairs = np.array([(u, v) for u in self.index for v in self.index])
        local = tf.scatter_nd(pairs, tf.reshape(local, [-1]), [self.count, self.count])
        return problem.ops.allreduce(local, comm=problem.comm)

    def restrict(self, r):
        """This rank's part of Phi^T r, as a vector over all corners."""
        part = tf.einsum("uij,ij->u", tf.constant(self.hats), r)
        return tf.scatter_nd(self.index[:, None], part, [self.count])

    def prolong(self, y0):
        return tf.einsum("u,uij->ij", tf.gather(y0, self.index), tf.constant(self.hats))

    def prepare(self, faces):
        return _CoarseCorrection(
            self, tf.linalg.cholesky(self.coarse_matrix(faces)), mean_kappa(faces)
        )


class _CoarseCorrection(linalg.SplitPreconditioner):
    """One solve's two-level M^-1: z = B^-1 r + Phi y0 with y0 = A0^-1 Phi^T r,
    so <r, z> = <r, B^-1 r> + <Phi^T r, y0>, and Phi^T r joins CG's reduction."""

    def __init__(self, two_level, cholesky, kappa_mean):
        self.two_level, self.cholesky, self.kappa_mean = two_level, cholesky, kappa_mean

    def split(self, r):
        return self.two_level.block(r, self.kappa_mean), self.two_level.restrict(r)

    def join(self, z, coarse_r):
        y0 = tf.linalg.cholesky_solve(self.cholesky, coarse_r[:, None])[:, 0]
        return z + self.two_level.prolong(y0), tf.reduce_sum(coarse_r * y0)


# ---- geometric multigrid ----


@dataclass
class Transfer:
    """From a distributed level to the next coarser one: how many of the
    neighbours' fine cells restriction collects (`reach`), whether the level
    smooths on rings of its neighbours' cells (`on_rings`) and with how many
    coarse ghost cells, and the per-axis NumPy matrices."""

    reach: int
    on_rings: bool
    ghosts: int
    interpolate: list  # [rows, cols]: fine (+ rings) x coarse (+ ghosts)
    restrict: list  # [rows, cols]: coarse x fine (+ reach)
    average: list  # [rows, cols]: coarse x fine, for kappa


@dataclass
class GridLevel:
    """A level's cells (a block's, or the whole gathered grid's) and spacings;
    `transfer` to the next coarser level (None on the last)."""

    rows: int
    cols: int
    hr: float
    hc: float
    transfer: Transfer | None = None


@dataclass
class Rings:
    """A level's faces and diagonal on RING rings of its neighbours' cells too
    (zero faces, unit diagonal beyond the physical boundary), and where the
    domain is (1 inside, 0 beyond)."""

    faces: list
    inside: tf.Tensor
    diag: tf.Tensor


@dataclass
class Level:
    """One level of one solve: its grid, whether it is the gathered grid
    (whole on every rank), and the operator from that solve's kappa (faces
    and diagonal; on rings where the level smooths on them; Cholesky on the
    last). The last distributed level only hands its cells on: no operator."""

    grid: GridLevel
    gathered: bool
    faces: tuple | None = None
    diag: tf.Tensor | None = None
    rings: Rings | None = None
    cholesky: tf.Tensor | None = None

    @property
    def transfer(self):
        return self.grid.transfer


class Multigrid(Preconditioner):
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
    damped Jacobi before and after."""

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
        self.comm, self.ops = problem.comm, problem.ops
        self.levels = self._coarsening(p.rows, p.cols, p.h, p.h, gathered=not coarsen_blocks)
        self.levels = self.levels if coarsen_blocks else self.levels[:1]
        last = self.levels[-1]
        self.gathered_levels = self._coarsening(
            p.m * last.rows, p.n * last.cols, last.hr, last.hc, gathered=True
        )

    def halo_exchanges(self, level):
        """Halo exchanges per V-cycle on a distributed level (a GridLevel): on
        rings, b's and the coarse correction's; otherwise one before every
        sweep but the first, the residual, its restriction and the coarse
        correction. The last hands its cells to the gathered grid: none."""
        if level.transfer is None:
            return 0
        return 2 if level.transfer.on_rings else 2 * self.SWEEPS + 2

    def _coarsening(self, rows, cols, hr, hc, gathered):
        """The levels from a rows x cols block (spacings hr, hc) down to one
        cell, or to at most DENSE cells for the gathered grid. Each level but
        the last keeps its transfer to the next as NumPy matrices per axis
        (made into graph constants where they are used)."""
        levels = [GridLevel(rows, cols, hr, hc)]
        while rows * cols > (self.DENSE if gathered else 1):
            fine = levels[-1]
            pairs = (fine.rows, halved(rows)), (fine.cols, halved(cols))
            reach = max(restriction_reach(*pair) for pair in pairs)
            ghosts = max(interpolation_ghosts(*pair, self.SWEEPS) for pair in pairs)
            coarse_side = min(coarse for _, coarse in pairs)
            on_rings = not gathered and min(rows, cols) >= self.RING and coarse_side >= ghosts
            fine.transfer = Transfer(
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
            hr, hc = hr * fine.rows / rows, hc * fine.cols / cols
            levels.append(GridLevel(rows, cols, hr, hc))
        return levels

    def _halo(self, level, u, width, fill):
        if level.gathered:  # the whole grid is here: only the physical boundary's ghosts
            pad = [[0, 0]] * (len(u.shape) - 2) + [[width, width]] * 2
            return tf.pad(u, pad, constant_values=fill)
        p = self.patch
        return self.ops.halo_exchange(u, p.m, p.n, fill_value=fill, width=width, comm=self.comm)

    def _apply(self, level, u):
        """This level's operator, -div(kappa grad u), with its spacings."""
        return self._stencil(level, self._halo(level, u, 1, 0.0), level.faces)

    def _stencil(self, level, up, faces):
        """The operator on the cells of `up` but its outermost ring."""
        e, w, n, s = faces
        c = up[..., 1:-1, 1:-1]
        across = e * (c - up[..., 1:-1, 2:]) + w * (c - up[..., 1:-1, :-2])
        along_ = n * (c - up[..., 2:, 1:-1]) + s * (c - up[..., :-2, 1:-1])
        return across / level.grid.hc**2 + along_ / level.grid.hr**2

    def _faces(self, level, kappa):
        """Face coefficients from cell kappa: the mean of the two cells, or the
        cell's own value at the physical boundary."""
        kp = self._halo(level, kappa, 1, -1.0)
        h = self.patch.h

        def face(neighbour, spacing):
            # the Dirichlet boundary lies (H + h) / 2 from a coarse cell's centre, not H
            boundary = kappa * (2 * spacing / (spacing + h))
            return tf.where(neighbour < 0, boundary, (kappa + neighbour) / 2)

        hr, hc = level.grid.hr, level.grid.hc
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
        return self.ops.allreduce(placed, comm=self.comm)

    def _boundary(self, level):
        """Which sides of this level's block are the physical boundary: top,
        bottom, left, right."""
        if level.gathered:
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
            (0, (top, bottom), level.grid.hr),
            (1, (left, right), level.grid.hc),
        ):
            ratio = -self._ghost_ratio(spacing)
            size = padded.shape[axis] - 2 * ghosts
            lo, inner, hi = (
                along(padded, axis, 0, ghosts),
                along(padded, axis, ghosts, size),
                along(padded, axis, size + ghosts, ghosts),
            )
            if transpose:
                if first:
                    inner = tf.concat(
                        [ratio * lo + along(inner, axis, 0, 1), along(inner, axis, 1, size - 1)],
                        axis,
                    )
                if last:
                    inner = tf.concat(
                        [
                            along(inner, axis, 0, size - 1),
                            along(inner, axis, size - 1, 1) + ratio * hi,
                        ],
                        axis,
                    )
                padded = inner
            else:
                farther = tf.zeros_like(along(lo, axis, 0, ghosts - 1))
                if first:
                    lo = tf.concat([farther, ratio * along(inner, axis, 0, 1)], axis)
                if last:
                    hi = tf.concat([ratio * along(inner, axis, size - 1, 1), farther], axis)
                padded = tf.concat([lo, inner, hi], axis)
        return padded

    def _own(self, whole, grid):
        p, r, c = self.patch, grid.rows, grid.cols
        return whole[p.bi * r : (p.bi + 1) * r, p.bj * c : (p.bj + 1) * c]

    def prepare(self, faces):
        """Per solve: every level's operator from the fine level's faces; returns M^-1."""
        e, w, n, s = faces
        finest = Level(self.levels[0], gathered=False, faces=faces)
        finest.diag = (e + w + n + s) / self.patch.h**2
        plan = [finest]
        kappa = (e + w + n + s) / 4  # a cell value of kappa on the finest level
        coarser = [(False, grid) for grid in self.levels[1:]]
        coarser += [(True, grid) for grid in self.gathered_levels]
        for gathered, grid in coarser:
            before = plan[-1]
            level = Level(grid, gathered=gathered)
            if gathered and not before.gathered:
                kappa = self._gather(kappa)
            else:
                along_rows, along_cols = before.transfer.average
                kappa = two_sided(along_rows, kappa, along_cols)
            if gathered or grid is not self.levels[-1]:  # the last distributed one only hands on
                level.faces = e, w, n, s = self._faces(level, kappa)
                level.diag = (e + w) / grid.hc**2 + (n + s) / grid.hr**2
            plan.append(level)
        for level in plan:
            if level.transfer is not None and level.transfer.on_rings:
                level.rings = self._rings(level)
        bottom = plan[-1]
        cells = bottom.grid.rows * bottom.grid.cols
        basis = tf.reshape(
            tf.eye(cells, dtype=kappa.dtype), [cells, bottom.grid.rows, bottom.grid.cols]
        )
        bottom.cholesky = tf.linalg.cholesky(tf.reshape(self._apply(bottom, basis), [cells, cells]))
        return lambda r: self._cycle(plan, 0, r)

    def _rings(self, level):
        """The level's operator on RING rings of its neighbours' cells: four
        halo exchanges per solve."""
        faces = [self._halo(level, f, self.RING, 0.0) for f in level.faces]
        e, w, n, s = faces
        diag = (e + w) / level.grid.hc**2 + (n + s) / level.grid.hr**2
        inside = tf.cast(diag > 0, diag.dtype)
        return Rings(faces=faces, inside=inside, diag=diag + (1 - inside))

    def _sweep_on_rings(self, level, x, b, rings):
        """One damped Jacobi sweep from x on `rings` rings to rings - 1 (b on
        RING rings). Beyond the physical boundary x stays zero: b, the faces
        and so the step are zero there."""
        out = self.RING - rings + 1
        faces = [ring(f, out) for f in level.rings.faces]
        step = (ring(b, out) - self._stencil(level, x, faces)) / ring(level.rings.diag, out)
        return ring(x, 1) + self.OMEGA * step

    def _smooth(self, level, x, b):
        for _ in range(self.SWEEPS):
            residual = b if x is None else b - self._apply(level, x)
            step = self.OMEGA * residual / level.diag
            x = step if x is None else x + step
        return x

    def _cycle(self, plan, i, b):
        """One V-cycle from level i down, for the levels `plan` (prepare's)."""
        level = plan[i]
        if i == len(plan) - 1:
            y = tf.linalg.cholesky_solve(level.cholesky, tf.reshape(b, [-1, 1]))
            return tf.reshape(y, tf.shape(b))
        coarse = plan[i + 1]
        if coarse.gathered and not level.gathered:  # the same cells, on every rank
            return self._own(self._cycle(plan, i + 1, self._gather(b)), level.grid)
        transfer = level.transfer
        reach = transfer.reach
        if transfer.on_rings:
            b_rings = self._halo(level, b, self.RING, 0.0)
            x = self.OMEGA * b_rings / level.rings.diag  # the first sweep from x = 0
            for rings in range(self.RING, self.RING - self.SWEEPS + 1, -1):
                x = self._sweep_on_rings(level, x, b_rings, rings)
            # x is on SWEEPS rings now: the residual on one, then on `reach`
            faces = [ring(f, self.RING - 1) for f in level.rings.faces]
            residual = ring(b_rings, self.RING - 1) - self._stencil(level, x, faces)
            fine = ring(residual, 1 - reach)
        else:
            x = self._smooth(level, None, b)
            fine = self._halo(level, b - self._apply(level, x), reach, 0.0)
        # the transpose of interpolation, over this block's fine cells and the
        # neighbours' within reach; divided by the fine cells per coarse cell
        along_rows, along_cols = transfer.restrict
        scale = (level.grid.rows / coarse.grid.rows) * (level.grid.cols / coarse.grid.cols)
        restricted = two_sided(along_rows, fine, along_cols) / scale
        restricted = self._boundary_ghosts(coarse, restricted, transpose=True)
        ghosts = transfer.ghosts
        ep = self._halo(coarse, self._cycle(plan, i + 1, restricted), ghosts, 0.0)
        ep = self._boundary_ghosts(coarse, ep, ghosts=ghosts)
        along_rows, along_cols = transfer.interpolate
        x = x + two_sided(along_rows, ep, along_cols)
        if not transfer.on_rings:
            return self._smooth(level, x, b)
        x = x * ring(level.rings.inside, self.RING - self.SWEEPS)  # zero beyond the boundary
        for rings in range(self.SWEEPS, 0, -1):
            x = self._sweep_on_rings(level, x, b_rings, rings)
        return x


def make(name, problem):
    """The preconditioner called `name` ("block-jacobi", "two-level",
    "multigrid", or None) for `problem`. A 1 x n grid has no interior block
    corners: "two-level" is then block-Jacobi."""
    p = problem.patch
    if name == "two-level" and min(p.m, p.n) == 1:
        name = "block-jacobi"
    makers = {
        "block-jacobi": lambda: BlockJacobi(p.rows, p.cols, p.h),
        "two-level": lambda: TwoLevel(problem),
        "multigrid": lambda: Multigrid(problem),
        None: Identity,
    }
    if name not in makers:
        raise ValueError(f"preconditioner {name!r}: choose one of {sorted(map(str, makers))}")
    return makers[name]()
