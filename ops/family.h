// Communicator families. One CommFamily per user communicator the Python
// side registered (adcme_mpi_register_comms) owns everything the ops keep
// about it: its forward, backward and check communicators, the sequence
// counter of its checked collectives, its deferred-check state (checks.cc)
// and a slot for the sparse ops' cache (sparse.cc).
//
// Ownership: the registry holds the families by shared_ptr; an op in
// flight holds its family too (FamilyRef), so mpi_finalize can never free a
// family under a running op. Kernels keep only a weak_ptr between runs.
//
// Lock order (a thread holding one may take only those after it):
//   1. registry_mu (family.cc)   held only to look up, add or drop families
//   2. CommFamily::mu            sequence counter and check state
//   3. petsc_mu (sparse.cc)      PETSc and the sparse cache
//   4. watch_mu, detached_mu     (wait.cc) leaves
// Nothing in family.cc calls into checks.cc or sparse.cc: their state is
// held as shared_ptr<void>, whose deleter they supply.
#ifndef ADCME_MPI_OPS_FAMILY_H_
#define ADCME_MPI_OPS_FAMILY_H_

#include <mpi.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "core.h"

namespace adcme_mpi {

struct CommFamily {
  MPI_Comm forward = MPI_COMM_NULL, backward = MPI_COMM_NULL, check = MPI_COMM_NULL;
  std::mutex mu;                       // guards sequence and checks
  int64_t sequence = 0;                // checked collectives so far, on every direction
  std::shared_ptr<void> checks;        // checks.cc's state, made on the first check
  std::shared_ptr<void> sparse_cache;  // sparse.cc's, guarded by petsc_mu
};

// The family of `comm` (one of its three communicators) and whether `comm`
// is its backward one; null for a communicator no family owns.
std::shared_ptr<CommFamily> FamilyOf(MPI_Comm comm, bool* backward);
// Every registered family, in registration order (the same on every rank).
std::vector<std::shared_ptr<CommFamily>> AllFamilies();

// One op run, counted while it is in flight: refused once mpi_finalize has
// begun closing, and waited for by it (adcme_mpi_close).
class OpInFlight {
 public:
  OpInFlight();
  ~OpInFlight();
  OpInFlight(const OpInFlight&) = delete;
  OpInFlight& operator=(const OpInFlight&) = delete;
  bool refused() const { return refused_; }

 private:
  bool refused_ = false;
};

}  // namespace adcme_mpi

#endif  // ADCME_MPI_OPS_FAMILY_H_
