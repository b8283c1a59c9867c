"""Shared by the heat and Poisson applications: an N x N grid of interior
nodes on [0,1]^2 (h = 1/(N+1), zero Dirichlet boundary) split into m x n
patches, rank r owning patch (r // n, r % n)."""
import numpy as np
from mpi4py import MPI


class Patch:
    def __init__(self, N, m, n, comm=None):
        self.comm = comm or MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        if m * n != self.size or N % m or N % n:
            raise ValueError(f"grid {N}x{N} cannot be split into {m}x{n} patches on "
                             f"{self.size} ranks")
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
        return global_array[self.r0:self.r0 + self.rows, self.c0:self.c0 + self.cols]

    def assemble(self, local_array):
        """Every rank's patch gathered into the global N x N array (on every rank)."""
        pieces = self.comm.allgather(np.asarray(local_array))
        G = np.zeros((self.N, self.N), dtype=pieces[0].dtype)
        for r, piece in enumerate(pieces):
            i, j = divmod(r, self.n)
            G[i * self.rows:(i + 1) * self.rows, j * self.cols:(j + 1) * self.cols] = piece
        return G


def default_grid(size):
    """A near-square m x n factorisation of the number of ranks."""
    m = int(np.floor(np.sqrt(size)))
    while size % m:
        m -= 1
    return m, size // m
