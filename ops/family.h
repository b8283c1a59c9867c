// Communicator families. One CommFamily per user communicator the Python
// side registered (adcme_mpi_register_comms) owns everything the ops keep
// about it: its forward, backward and check communicators, the sequence
// counter of its checked collectives, its deferred-check state (checks.cc),
// a slot for the sparse ops' cache (sparse.cc) and the reversed
// communicators of the reverse scans (ReversedComm).
//
// Ownership: the registry holds the families by shared_ptr; an op in
// flight holds its family too (FamilyRef), so mpi_finalize can never free a
// family under a running op. Kernels keep only a weak_ptr between runs.
//
// Lock order (a thread holding one may take only those after it):
//   1. registry_mu (family.cc)   held only to look up, add or drop families
//   2. CommFamily::mu            sequence counter, check state, reversed comms
//                                (ReversedComm splits under it: a blocking collective)
//   3. petsc_mu (sparse.cc)      PETSc and the sparse cache
//   4. watch_mu, detached_mu     (wait.cc) leaves
//      requests_mu               (p2p.cc, mpi_isend / mpi_irecv's requests) a leaf
// Nothing in family.cc calls into checks.cc or sparse.cc: their state is
// held as shared_ptr<void>, whose deleter they supply.
#ifndef ADCME_MPI_OPS_FAMILY_H_
#define ADCME_MPI_OPS_FAMILY_H_

#include <mpi.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/status/status.h"
#include "core.h"

namespace adcme_mpi {

struct CommFamily {
  MPI_Comm forward = MPI_COMM_NULL, backward = MPI_COMM_NULL, check = MPI_COMM_NULL;
  std::mutex mu;                       // guards sequence, checks and the reversed comms
  int64_t sequence = 0;                // checked collectives so far, on every direction
  std::shared_ptr<void> checks;        // checks.cc's state, made on the first check
  std::shared_ptr<void> sparse_cache;  // sparse.cc's, guarded by petsc_mu
  // forward and backward with their ranks in reverse order (ReversedComm),
  // made on first use under mu; freed with the family (its destructor, when
  // adcme_mpi_forget_comms drops it, before the three above are freed)
  MPI_Comm reversed_forward = MPI_COMM_NULL, reversed_backward = MPI_COMM_NULL;
  CommFamily() = default;
  ~CommFamily();
  CommFamily(const CommFamily&) = delete;
  CommFamily& operator=(const CommFamily&) = delete;
};

// The family of `comm` (one of its three communicators) and whether `comm`
// is its backward one; null for a communicator no family owns.
std::shared_ptr<CommFamily> FamilyOf(MPI_Comm comm, bool* backward);
// Every registered family, in registration order (the same on every rank).
std::vector<std::shared_ptr<CommFamily>> AllFamilies();

// `site.comm` with its ranks in reverse order (rank r of it is rank
// size-1-r of site.comm), for the reverse scans of mpi_scan's gradient: an
// MPI_Comm_split of site.comm (key size-1-rank), so a collective over it,
// made by the first call on each of a family's forward and backward
// communicators, under the family's mu and under the watchdog, and kept by
// the family. The caller calls it at the same op on every rank (after its
// cross-rank check). `*temporary` is set for a communicator without a
// family: then the split is the caller's to free (MPI_Comm_free).
absl::Status ReversedComm(const CallSite& site, MPI_Comm* out, bool* temporary);

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
