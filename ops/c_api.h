// The plain C entry points of the op libraries: what the Python runtime calls
// through ctypes (adcme_mpi/_c_api.py holds the matching signatures, in the
// same order; tests/unit/test_c_api.py checks that the two lists agree).
// Everything else in the libraries is C++ behind TensorFlow's op registry.
#ifndef ADCME_MPI_OPS_C_API_H_
#define ADCME_MPI_OPS_C_API_H_

#include <stdint.h>

#define ADCME_MPI_C_API extern "C" __attribute__((visibility("default")))

// ---- libadcme_mpi_ops.so ----

// Registers the duplicates of one user communicator (Fortran handles):
// forward messages, gradient messages, and the one all their cross-rank
// checks share (so a rank in a forward op and a rank in a gradient op see
// each other's op). (execution.cc)
ADCME_MPI_C_API void adcme_mpi_register_comms(int64_t forward, int64_t backward, int64_t check);

// Frees every family's check requests and forgets the communicators, before
// the Python side frees them. (execution.cc)
ADCME_MPI_C_API void adcme_mpi_forget_comms(void);

// "<MPI_Get_library_version>\x1f<path of the shared object defining MPI_Init>",
// for the import-time check that the ops and mpi4py share one libmpi.
// Returns the length snprintf would write. (execution.cc)
ADCME_MPI_C_API int adcme_mpi_libmpi_info(char* buffer, int length);

// Called once every rank has reached the end of its program: waits up to
// `grace_seconds` for gradient sends still in flight, then writes the first
// one nobody received into `buffer`. Returns how many were left. (waiting.cc)
ADCME_MPI_C_API int adcme_mpi_complete_detached_sends(double grace_seconds, char* buffer,
                                                      int length);

// The end of the program (mpi_finalize, or interpreter exit) as a checked
// collective on `forward_handle`'s family. Returns 0 when every rank ended
// too; otherwise 1 with the message in `buffer`. (checks.cc)
ADCME_MPI_C_API int adcme_mpi_end_of_program(int64_t forward_handle, char* buffer, int length);

// ---- libadcme_mpi_sparse.so (built only where PETSc was found) ----

// The PETSc the library was built against: "<PetscGetVersion>\x1f<hypre: 0|1>".
ADCME_MPI_C_API int adcme_mpi_petsc_info(char* buffer, int length);

// Adds options to PETSc's database ("-mysolver_ksp_type gmres ..."), read
// by solves that name that options prefix. Initialises PETSc if needed.
// Returns 0, or 1 with PETSc's message in `buffer`.
ADCME_MPI_C_API int adcme_mpi_petsc_options(const char* options, char* buffer, int length);

// The last solve's iteration count (returned), its seconds inside KSPSolve,
// and how many matrix Systems were set up so far (for the benchmarks).
ADCME_MPI_C_API int64_t adcme_mpi_sparse_last_solve(double* seconds, int64_t* setups);

// Destroys every cached matrix and solver and finalises PETSc (before MPI is
// finalised). Collective over every communicator a sparse op used.
ADCME_MPI_C_API void adcme_mpi_petsc_finalize(void);

#endif  // ADCME_MPI_OPS_C_API_H_
