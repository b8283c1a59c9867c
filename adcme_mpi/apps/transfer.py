"""Transfer between cell-centred grids for geometric multigrid: 1-D linear
interpolation, its transpose (restriction) and cell averages as NumPy
matrices, how far each reaches into the neighbours' cells (the halo widths),
and their 2-D application (one 1-D transfer per axis, sparse)."""

import math

import numpy as np
import tensorflow as tf


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


def to_sparse(matrix, dtype):
    """A NumPy matrix as a tf.sparse.SparseTensor of its nonzeros."""
    index = np.argwhere(matrix)
    return tf.sparse.SparseTensor(index, tf.constant(matrix[tuple(index.T)], dtype), matrix.shape)


def two_sided(left, x, right):
    """left @ x @ right^T with sparse left and right (NumPy): the 2-D transfer
    as one 1-D transfer per axis."""
    x = tf.sparse.sparse_dense_matmul(to_sparse(left, x.dtype), x)
    return tf.sparse.sparse_dense_matmul(x, to_sparse(right, x.dtype), adjoint_b=True)


def along(x, axis, start, length):
    """`length` rows (axis 0) or columns (axis 1) of x from `start`."""
    return x[start : start + length] if axis == 0 else x[:, start : start + length]
