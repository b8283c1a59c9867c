// The communicator registry (execution.cc): which duplicates of a user
// communicator carry gradient messages, and where their checks go.
#ifndef ADCME_MPI_OPS_REGISTRY_H_
#define ADCME_MPI_OPS_REGISTRY_H_

#include <mpi.h>

#include <cstdint>

namespace adcme_mpi {

struct CheckQueue;  // checks.cc: the family's checks still in flight

struct CommRoute {
  MPI_Comm check;        // the family's check communicator
  bool backward;         // this communicator carries gradient messages
  int64_t* sequence;     // the family's count of checked collectives (null: unregistered)
  CheckQueue* deferred;  // the family's deferred checks (null: unregistered)
};

// A family's queue of deferred checks, on its check communicator (checks.cc;
// kept for the process, like the sequence counter).
CheckQueue* NewCheckQueue(MPI_Comm check);
// Frees every family's check requests (before the communicators are freed).
void FreeCheckQueues();

// Unregistered communicators route checks to themselves, without numbers.
CommRoute RouteOf(MPI_Comm comm);
// The next sequence number of the family (0 when unregistered).
int64_t NextSequenceNumber(const CommRoute& route);

}  // namespace adcme_mpi

#endif  // ADCME_MPI_OPS_REGISTRY_H_
