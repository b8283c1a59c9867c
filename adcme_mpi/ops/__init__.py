"""Op wrappers, one module per op family; importing a module registers the
gradients of its ops (each next to its forward op, in adjoint pairs)."""

from .collectives import mpi_allreduce, mpi_bcast, mpi_gather, mpi_scatter, mpi_sum
from .halo import mpi_halo_exchange
from .p2p import mpi_recv, mpi_send, mpi_sendrecv

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
]
