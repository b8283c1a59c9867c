// The plain C entry points of the op libraries: what the Python runtime calls
// through ctypes (adcme_mpi/_c_api.py holds the matching signatures, in the
// same order; tests/unit/test_c_api.py checks that the two lists agree).
// Everything else in the libraries is C++ behind TensorFlow's op registry.
#ifndef ADCME_MPI_OPS_C_API_H_
#define ADCME_MPI_OPS_C_API_H_

#include <stdint.h>

#define ADCME_MPI_C_API extern "C" __attribute__((visibility("default")))

// ---- libadcme_mpi_ops.so ----

// The settings adcme_mpi/settings.py parsed from the environment, handed
// over once at import, before any kernel runs. (core.cc)
ADCME_MPI_C_API void adcme_mpi_configure(int check, int mpi_thread, double timeout,
                                         int oversubscribed);

// MPI_TAG_UB of a communicator (Fortran handle), or of COMM_WORLD where the
// communicator has none. (core.cc)
ADCME_MPI_C_API int adcme_mpi_tag_upper_bound(int64_t comm);

// Registers the duplicates of one user communicator (Fortran handles) as a
// family: forward messages, gradient messages, and the one all their
// cross-rank checks share (so a rank in a forward op and a rank in a
// gradient op see each other's op). (family.cc)
ADCME_MPI_C_API void adcme_mpi_register_comms(int64_t forward, int64_t backward, int64_t check);

// mpi_finalize's first step on this rank: ops still waiting end with an
// error naming mpi_finalize, no op may start, and it returns once none is in
// flight (under the watchdog, as `who`). (family.cc)
ADCME_MPI_C_API void adcme_mpi_close(const char* who);

// Drops every family (their check requests are freed), before the Python
// side frees the communicators. (family.cc)
ADCME_MPI_C_API void adcme_mpi_forget_comms(void);

// "<MPI_Get_library_version>\x1f<path of the shared object defining MPI_Init>",
// for the import-time check that the ops and mpi4py share one libmpi.
// Returns the length snprintf would write. (kernel.cc)
ADCME_MPI_C_API int adcme_mpi_libmpi_info(char* buffer, int length);

// A watched section for a blocking call made elsewhere (mpi4py's, on the
// Python side): the watchdog aborts the job with "adcme_mpi watchdog: <who>
// waited <s> s (...) for <waiting_for>" if it lasts longer than `timeout`
// seconds (< 0: ADCME_MPI_TIMEOUT; 0: not watched). Returns the handle
// adcme_mpi_watch_end takes. (wait.cc)
ADCME_MPI_C_API int64_t adcme_mpi_watch_begin(const char* who, const char* waiting_for,
                                              double timeout);
ADCME_MPI_C_API void adcme_mpi_watch_end(int64_t section);

// Called once every rank has reached the end of its program: waits up to
// `grace_seconds` for gradient sends still in flight, then writes the first
// one nobody received into `buffer`. Returns how many were left. (wait.cc)
ADCME_MPI_C_API int adcme_mpi_complete_detached_sends(double grace_seconds, char* buffer,
                                                      int length);

// At the end of the program: the requests of mpi_isend / mpi_irecv (and of
// their gradients) that nothing waited on. Writes the first ("mpi_isend
// (rank r of n) posted a send to rank d (tag t, ...) that was never waited
// on ...") into `buffer`, abandons them all with their buffers kept alive,
// and returns how many. (p2p.cc)
ADCME_MPI_C_API int adcme_mpi_unwaited_requests(char* buffer, int length);

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
