"""Op wrappers; importing a module registers its gradients."""
from .allreduce import mpi_allreduce
from .bcast import mpi_bcast
from .gather import mpi_gather, mpi_scatter
from .halo import mpi_halo_exchange
from .send import mpi_recv, mpi_send, mpi_sendrecv
from .sum import mpi_sum

__all__ = ["mpi_sum", "mpi_allreduce", "mpi_bcast", "mpi_gather", "mpi_scatter",
           "mpi_send", "mpi_recv", "mpi_sendrecv", "mpi_halo_exchange"]
