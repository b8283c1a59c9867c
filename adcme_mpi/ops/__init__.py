"""Op wrappers; importing a module registers its gradients."""
from .allreduce import mpi_allreduce
from .bcast import mpi_bcast
from .gather import mpi_gather, mpi_scatter
from .sum import mpi_sum

__all__ = ["mpi_sum", "mpi_allreduce", "mpi_bcast", "mpi_gather", "mpi_scatter"]
