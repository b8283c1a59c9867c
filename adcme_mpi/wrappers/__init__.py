"""Op wrappers, one module per op family; importing a module registers the
gradients of its ops (each next to its forward op, in adjoint pairs)."""

from .collectives import mpi_allreduce, mpi_bcast, mpi_gather, mpi_scatter, mpi_sum
from .halo import mpi_halo_exchange
from .p2p import mpi_recv, mpi_send, mpi_sendrecv
from .sparse import (
    mpi_sparse_matvec,
    mpi_sparse_solve,
    mpi_SparseTensor,
    petsc_info,
    petsc_options,
)

__all__ = [
    "mpi_sum",
    "mpi_allreduce",
    "mpi_bcast",
    "mpi_gather",
    "mpi_scatter",
    "mpi_send",
    "mpi_recv",
    "mpi_sendrecv",
    "mpi_halo_exchange",
    "mpi_SparseTensor",
    "mpi_sparse_matvec",
    "mpi_sparse_solve",
    "petsc_options",
    "petsc_info",
]
