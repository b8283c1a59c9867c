"""adcme_mpi: differentiable MPI for TensorFlow.

Importing the package initialises MPI (as importing mpi4py.MPI does), loads the
op library and checks that it and mpi4py share one libmpi. Nothing collective:
the ops' communicators are duplicated by mpi_init() or by the first collective
op on them.
"""

from .settings import SettingsError  # (first: a malformed ADCME_MPI_* variable stops the import)
from . import _loader  # noqa: F401  (first: picks the libmpi before mpi4py.MPI loads one)
from . import _tf_private, ordering, revolve, runtime  # noqa: F401
from ._loader import MPILibraryMismatch, MPILibraryMismatchError, PETScUnavailableError
from .runtime import (
    Session,
    mpi_barrier,
    mpi_finalize,
    mpi_finalized,
    mpi_init,
    mpi_initialized,
    mpi_rank,
    mpi_size,
    mpi_sync,
    register_comm,
    require_mpi,
    MPINotReady,
    MPINotReadyError,
)
from .optimize import MPIOptimizeError, mpi_optimize
from .wrappers._callsite import XLACompilationError
from . import wrappers
from . import linalg  # noqa: E402  (after wrappers: it builds on them)
from .data_parallel import DistributedGradientTape, broadcast_variables  # noqa: E402
from .wrappers import *  # noqa: F403  (the op table's public names)

__version__ = "0.2.0"

_tf_private.exclude_from_autograph("adcme_mpi")
runtime._initialize_mpi()

__all__ = [
    "Session",
    "mpi_init",
    "mpi_finalize",
    "mpi_initialized",
    "mpi_finalized",
    "mpi_rank",
    "mpi_size",
    "require_mpi",
    "mpi_barrier",
    "mpi_sync",
    "register_comm",
    "PETScUnavailableError",
    "XLACompilationError",
    "SettingsError",
    "mpi_optimize",
    "MPIOptimizeError",
    "MPINotReadyError",
    "MPILibraryMismatchError",
    "MPINotReady",
    "MPILibraryMismatch",
    "ordering",
    "revolve",
    "linalg",
    "DistributedGradientTape",
    "broadcast_variables",
] + wrappers.__all__
