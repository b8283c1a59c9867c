"""Helpers shared by the applications and examples: an N x N grid of interior nodes on [0,1]^2
(h = 1/(N+1), zero Dirichlet boundary) split into m x n patches, rank r owning
patch (r // n, r % n); the inverse problems' objective recorder and figures;
printing in rank order."""

import os
import sys

import numpy as np
from mpi4py import MPI

from ..wrappers.halo import near_square_grid


class Patch:
    def __init__(self, N, m, n, comm=None):
        self.comm = comm or MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        if m * n != self.size or N % m or N % n:
            raise ValueError(
                f"grid {N}x{N} cannot be split into {m}x{n} patches on {self.size} ranks"
            )
        self.N, self.m, self.n = N, m, n
        self.h = 1.0 / (N + 1)
        self.bi, self.bj = divmod(self.rank, n)
        self.rows, self.cols = N // m, N // n
        self.r0, self.c0 = self.bi * self.rows, self.bj * self.cols

    def coordinates(self, border=0):
        """(x, y) of this patch's nodes, with `border` extra layers around it
        (those may lie on the physical boundary)."""
        rows = np.arange(self.r0 - border, self.r0 + self.rows + border)
        cols = np.arange(self.c0 - border, self.c0 + self.cols + border)
        y, x = np.meshgrid((rows + 1) * self.h, (cols + 1) * self.h, indexing="ij")
        return x, y

    def local(self, global_array):
        return global_array[self.r0 : self.r0 + self.rows, self.c0 : self.c0 + self.cols]

    def assemble(self, local_array):
        """Every rank's patch gathered into the global N x N array (on every rank)."""
        pieces = self.comm.allgather(np.asarray(local_array))
        G = np.zeros((self.N, self.N), dtype=pieces[0].dtype)
        for r, piece in enumerate(pieces):
            i, j = divmod(r, self.n)
            G[i * self.rows : (i + 1) * self.rows, j * self.cols : (j + 1) * self.cols] = piece
        return G


def default_grid(size):
    """A near-square m x n factorisation of the number of ranks."""
    return near_square_grid(size)


def require_ranks(script, exactly=None, at_least=None):
    """Exit (status 2, one line from rank 0) before building anything when the
    job does not have the rank count this example is written for."""
    size = MPI.COMM_WORLD.Get_size()
    if (exactly is None or size == exactly) and (at_least is None or size >= at_least):
        return
    need = f"exactly {exactly}" if exactly is not None else f"at least {at_least}"
    n = exactly if exactly is not None else at_least
    if MPI.COMM_WORLD.Get_rank() == 0:
        print(
            f"{script} needs {need} ranks, got {size}: mpiexec -n {n} python examples/{script}",
            file=sys.stderr,
            flush=True,
        )
    MPI.COMM_WORLD.Barrier()
    sys.exit(2)


def pyplot_or_none(name):
    """matplotlib.pyplot on the Agg backend, or None without matplotlib (one
    line says how to get it)."""
    try:
        import matplotlib
    except ImportError:
        print(
            f"{name}: figures skipped (matplotlib is not installed; "
            "pip install '.[examples]' to get them)",
            flush=True,
        )
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_loss_figure(plt, path, name, history):
    """The loss per evaluation of an inverse problem, log scale."""
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.semilogy(history)
    ax.set_xlabel("evaluation")
    ax.set_ylabel("loss")
    ax.set_title(f"{name} inverse problem")
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def save_figures(out, name, fields, titles, history):
    """<out>/<name>_fields.png (the fields side by side) and <out>/<name>_loss.png
    (loss per evaluation). Returns both paths, or [] without matplotlib (one
    line says how to get it). Rank 0 calls it."""
    plt = pyplot_or_none(name)
    if plt is None:
        return []
    os.makedirs(out, exist_ok=True)
    paths = [os.path.join(out, f"{name}_fields.png"), os.path.join(out, f"{name}_loss.png")]
    fig, axes = plt.subplots(1, len(fields), figsize=(4.4 * len(fields), 4))
    for ax, field, title in zip(axes, fields, titles):
        im = ax.imshow(field, origin="lower", extent=[0, 1, 0, 1])
        ax.set_title(title)
        fig.colorbar(im, ax=ax)
    fig.savefig(paths[0], dpi=90, bbox_inches="tight")
    plt.close(fig)
    save_loss_figure(plt, paths[1], name, history)
    return paths


def recording_fg(sess, loss, grad, parameters):
    """fg(x) -> (loss, grad) for mpi_optimize, one graph run per call, and the
    list of losses it appends to (rank 0's values are the real ones)."""
    history = []

    def fg(x):
        value, gradient = sess.run([loss, grad], {parameters: x})
        history.append(value)
        return value, gradient

    return fg, history


def print_in_rank_order(text, comm=None):
    """Every rank prints `text`, rank 0 first (a barrier between ranks)."""
    comm = comm or MPI.COMM_WORLD
    for rank in range(comm.Get_size()):
        if rank == comm.Get_rank():
            print(text, flush=True)
        comm.Barrier()
