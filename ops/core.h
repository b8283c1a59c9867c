// The vocabulary every other file of ops/ uses, and nothing that calls back
// into them: the settings (handed over by Python once, at import), the op
// table's names and check kinds, CallSite (where a kernel runs and how its
// messages begin), and the argument helpers.
#ifndef ADCME_MPI_OPS_CORE_H_
#define ADCME_MPI_OPS_CORE_H_

#include <mpi.h>

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "op_table.h"  // generated from adcme_mpi/op_table.py into the build's generated/
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"

namespace adcme_mpi {

using tensorflow::DataType;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;

// The environment settings, parsed once by adcme_mpi/settings.py (a
// malformed value is an error at import there) and handed over through
// adcme_mpi_configure before any kernel runs. Until then: the defaults.
struct Settings {
  bool check = true;           // ADCME_MPI_CHECK
  bool mpi_thread = false;     // ADCME_MPI_THREAD=1: kernels run on one MPI thread
  double timeout = 0;          // ADCME_MPI_TIMEOUT seconds (0: no watchdog)
  bool oversubscribed = true;  // more local ranks than cores (or unknown): waits yield the core
};
const Settings& GetSettings();

// Which collective a check is for (the op table's check kinds: kMPISum,
// kMPIHaloExchange, ...; ops without a check have 0).
#define ADCME_MPI_OP_KIND(type, name, backward_name, kind) k##type = kind,
enum class OpKind : int64_t {
  kNone = 0,
  ADCME_MPI_OP_TABLE(ADCME_MPI_OP_KIND) kEndOfProgram = 99,
};
#undef ADCME_MPI_OP_KIND
// The op type of a check kind ("MPISum"), or "" for none.
const char* OpTypeOfKind(int64_t kind);
// The check kind of an op type (kNone for an unchecked or unknown op).
OpKind KindOfOpType(const std::string& op_type);
// What messages call an op (the op table's names): "mpi_bcast" on a forward
// pass; in a backward pass, the row's backward name ("gradient of mpi_sum").
std::string UserFacingName(const std::string& op_type, bool backward);

// Where an op writes its data outputs: the op table's `buffer` column
// (adcme_mpi/op_table.py, BUFFERS; MpiKernel::OutputBuffer in kernel.h).
enum class BufferPolicy { kNew, kInput };
BufferPolicy BufferPolicyOfOpType(const std::string& op_type);

struct CommFamily;  // family.h: the communicators and state of one user communicator

// Where a kernel runs: "mpi_bcast (rank 2 of 4)". Every message names it.
struct CallSite {
  std::string op;  // UserFacingName of the op
  MPI_Comm comm = MPI_COMM_NULL;
  int rank = -1;
  int size = 0;
  bool backward = false;  // comm is a family's gradient communicator
  // The family `comm` belongs to (null: none). Not owned: whoever runs with
  // this site holds the family for the run (see family.h, FamilyRef).
  CommFamily* family = nullptr;
  std::string Describe() const;
  // Turns an MPI return code into a status: "mpi_bcast (rank 2 of 4) | MPI_Ibcast failed: ...".
  absl::Status Check(int rc, const char* mpi_function) const;
  absl::Status InvalidArgument(const std::string& what) const;
};

// A call site for code that runs outside a kernel (the C API): `op` on `comm`.
CallSite SiteOn(const std::string& op, MPI_Comm comm);

// A scalar int32 input (root, dest, src, tag) checked to lie in [lo, hi].
absl::Status ScalarIntArg(OpKernelContext* ctx, int index, const char* name, int64_t lo, int64_t hi,
                          const CallSite& site, int* out);

// The MPI datatype of data argument `arg`, or an error naming it:
// "argument 'a' has dtype complex64; supported: float32, float64, int32, int64".
absl::Status DatatypeArg(const CallSite& site, const char* arg, const Tensor& t, MPI_Datatype* out);

// Largest tag a user may pass on this communicator (MPI_TAG_UB). The one
// place it is read: Python asks through adcme_mpi_tag_upper_bound.
int TagUpperBound(MPI_Comm comm);

// Element count that fits MPI's int count arguments.
absl::Status CountOf(const CallSite& site, const char* arg, int64_t elements, int* count);

std::string ShapeString(DataType dtype, const TensorShape& shape);

// Raw bytes of a tensor, as MPI's void* buffers want them.
inline char* DataOf(const Tensor& t) { return const_cast<char*>(t.tensor_data().data()); }

}  // namespace adcme_mpi

#endif  // ADCME_MPI_OPS_CORE_H_
