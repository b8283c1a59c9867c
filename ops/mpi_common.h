// Shared MPI plumbing for every adcme_mpi kernel: communicator resolution,
// checked MPI calls with "rank r | MPI_X failed: ..." messages, argument
// validation, the cross-rank metadata check, watchdog-aware waiting and the
// single MPI thread that runs all kernels in the order TF hands them over.
#ifndef ADCME_MPI_OPS_MPI_COMMON_H_
#define ADCME_MPI_OPS_MPI_COMMON_H_

#include <mpi.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"

namespace adcme_mpi {

using tensorflow::DataType;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;

// MPI datatype for a TF element type (float, double, int32, int64).
absl::Status MpiDatatypeFor(DataType dtype, MPI_Datatype* out);

// Where a kernel runs: "MPIBcast (rank 2 of 4)". Every message names it.
struct CallSite {
  std::string op;  // TF op type, e.g. "MPIBcast"
  MPI_Comm comm = MPI_COMM_NULL;
  int rank = -1;
  int size = 0;
  std::string Describe() const;
  // Turns an MPI return code into a status: "MPIBcast (rank 2 of 4) | MPI_Ibcast failed: ...".
  absl::Status Check(int rc, const char* mpi_function) const;
  absl::Status InvalidArgument(const std::string& what) const;
};

// Base of every MPI kernel. Subclasses implement Run(); it executes inline
// (default) or, with ADCME_MPI_THREAD=1, on one dedicated MPI thread that
// keeps blocking MPI calls off TF's inter-op pool. Either way kernels reach
// MPI in the order TF starts them: program order, which the Python wrappers
// enforce with control edges (one MPI op in flight per graph).
class MpiKernel : public tensorflow::AsyncOpKernel {
 public:
  explicit MpiKernel(OpKernelConstruction* c);
  void ComputeAsync(OpKernelContext* ctx, DoneCallback done) final;

 protected:
  virtual absl::Status Run(OpKernelContext* ctx, const CallSite& site) = 0;

  // A scalar int32/int64 input (root, dest, src, tag) checked to lie in [lo, hi].
  absl::Status ScalarIntArg(OpKernelContext* ctx, int index, const char* name,
                            int64_t lo, int64_t hi, const CallSite& site,
                            int* out) const;

 private:
  int64_t comm_handle_;
};

// Largest tag a user may pass on this communicator (MPI_TAG_UB).
int TagUpperBound(MPI_Comm comm);

// True unless ADCME_MPI_CHECK=0: collectives compare shapes, dtypes and roots
// across ranks before moving data, so a mismatch is an error, not a hang.
bool MetadataChecksEnabled();

// Everyone's metadata row (one Allgather). rows[r] is rank r's `mine`.
absl::Status AllgatherMetadata(const CallSite& site, const std::vector<int64_t>& mine,
                               std::vector<std::vector<int64_t>>* rows);

// Checks that every rank passed the same dtype, shape and (optionally) root;
// on mismatch every rank returns the same error listing each rank's values.
absl::Status CheckSameAcrossRanks(const CallSite& site, const char* arg,
                                  const Tensor& t, int root);

// Waits for all requests. With ADCME_MPI_TIMEOUT=<seconds> set, a wait longer
// than that aborts the whole job with a message naming the op, the rank and
// `waiting_for` (the peers). Polls politely so oversubscribed ranks progress.
absl::Status WaitAll(const CallSite& site, std::vector<MPI_Request>* requests,
                     std::vector<MPI_Status>* statuses, const std::string& waiting_for);

// Blocking matched probe with the same watchdog; returns the message handle.
absl::Status ProbeMessage(const CallSite& site, int source, int tag,
                          MPI_Message* message, MPI_Status* status,
                          const std::string& waiting_for);

std::string ShapeString(DataType dtype, const TensorShape& shape);

// Raw bytes of a tensor, as MPI's void* buffers want them.
inline char* DataOf(const Tensor& t) { return const_cast<char*>(t.tensor_data().data()); }

// Element count that fits MPI's int count arguments.
absl::Status CountOf(const CallSite& site, const char* arg, int64_t elements, int* count);

#define ADCME_MPI_RETURN_IF_ERROR(expr)         \
  do {                                          \
    absl::Status _adcme_status = (expr);        \
    if (!_adcme_status.ok()) return _adcme_status; \
  } while (0)

}  // namespace adcme_mpi

#endif  // ADCME_MPI_OPS_MPI_COMMON_H_
