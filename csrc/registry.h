// The communicator registry (execution.cc): which duplicates of a user
// communicator carry gradient messages, and where their checks go.
#ifndef ADCME_MPI_CSRC_REGISTRY_H_
#define ADCME_MPI_CSRC_REGISTRY_H_

#include <mpi.h>

#include <cstdint>

namespace adcme_mpi {

struct CommRoute {
  MPI_Comm check;     // the family's check communicator
  bool backward;      // this communicator carries gradient messages
  int64_t* sequence;  // the family's count of checked collectives (null: unregistered)
};

// Unregistered communicators route checks to themselves, without numbers.
CommRoute RouteOf(MPI_Comm comm);
// The next sequence number of the family (0 when unregistered).
int64_t NextSequenceNumber(const CommRoute& route);

}  // namespace adcme_mpi

#endif  // ADCME_MPI_CSRC_REGISTRY_H_
