// What every adcme_mpi kernel shares. Split by concern:
//   execution.cc  settings, the kernel base (inline or on the MPI thread),
//                 CallSite, argument helpers, the communicator registry;
//   waiting.cc    waits and probes with the watchdog;
//   checks.cc     the cross-rank agreement check (op, sequence number, shapes).
// Op families keep their REGISTER_OPs next to their kernels: collective.cc,
// p2p.cc, halo.cc.
//
// Ordering token: every op takes a float scalar `token` as its last input and
// returns one as its last output. The Python wrappers thread one token through
// all MPI ops of a program (adcme_mpi/ordering.py), so data dependencies keep
// MPI ops in program order in every mode, and the token's gradient runs the
// backward ops in exact reverse order.
#ifndef ADCME_MPI_OPS_COMMON_H_
#define ADCME_MPI_OPS_COMMON_H_

#include <mpi.h>

#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "op_table.h"  // generated from adcme_mpi/op_table.py
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/platform/errors.h"

namespace adcme_mpi {

using tensorflow::DataType;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;
using tensorflow::shape_inference::InferenceContext;

// Environment settings, read once.
struct Settings {
  bool check = true;           // ADCME_MPI_CHECK (default on; 0 turns it off)
  bool mpi_thread = false;     // ADCME_MPI_THREAD=1: kernels run on one MPI thread
  double timeout = 0;          // ADCME_MPI_TIMEOUT seconds (0: no watchdog)
  bool oversubscribed = true;  // more local ranks than cores (or unknown)
};
const Settings& GetSettings();

// What messages call an op: its Python name ("mpi_bcast"), or for an op that
// runs in a backward pass, "gradient of mpi_sum" (MPIBcast is mpi_sum's adjoint).
std::string UserFacingName(const std::string& op_type, bool backward);

// Where a kernel runs: "mpi_bcast (rank 2 of 4)". Every message names it.
struct CallSite {
  std::string op;  // UserFacingName of the op
  MPI_Comm comm = MPI_COMM_NULL;
  int rank = -1;
  int size = 0;
  bool backward = false;                // comm is a gradient communicator
  MPI_Comm check_comm = MPI_COMM_NULL;  // where cross-rank checks go
  std::string Describe() const;
  // Turns an MPI return code into a status: "mpi_bcast (rank 2 of 4) | MPI_Ibcast failed: ...".
  absl::Status Check(int rc, const char* mpi_function) const;
  absl::Status InvalidArgument(const std::string& what) const;
};

// Base of every MPI kernel. Subclasses implement Run(). By default it runs
// inline, as a synchronous kernel (TensorFlow's cheapest dispatch: no async
// bookkeeping, no hand-off to another thread); with ADCME_MPI_THREAD=1 it is
// an asynchronous kernel whose work runs on one dedicated MPI thread that
// keeps blocking MPI calls off TF's inter-op pool. Either way kernels reach
// MPI in the order TF starts them, which the ordering token makes program order.
// The base writes the token output (always the last output).
class MpiKernel : public tensorflow::AsyncOpKernel {
 public:
  explicit MpiKernel(OpKernelConstruction* c);
  void ComputeAsync(OpKernelContext* ctx, DoneCallback done) final;
  void Compute(OpKernelContext* ctx) final;
  // nullptr (a synchronous kernel) unless ADCME_MPI_THREAD=1
  tensorflow::AsyncOpKernel* AsAsync() final;
  // inline: never worth a thread hop (its waits block the caller either way)
  bool IsExpensive() final;

 protected:
  virtual absl::Status Run(OpKernelContext* ctx, const CallSite& site) = 0;

 private:
  void Work(OpKernelContext* ctx);
  // The op's name, communicators, rank and size: built on the first run (the
  // communicator is registered by then) and the same for every later one.
  absl::StatusOr<const CallSite*> Site();

  int64_t comm_handle_;
  std::once_flag site_once_;
  CallSite site_;
  absl::Status site_status_;
};

// A scalar int32 input (root, dest, src, tag) checked to lie in [lo, hi].
absl::Status ScalarIntArg(OpKernelContext* ctx, int index, const char* name, int64_t lo, int64_t hi,
                          const CallSite& site, int* out);

// The MPI datatype of data argument `arg`, or an error naming it:
// "argument 'a' has dtype complex64; supported: float32, float64, int32, int64".
absl::Status DatatypeArg(const CallSite& site, const char* arg, const Tensor& t, MPI_Datatype* out);

// Largest tag a user may pass on this communicator (MPI_TAG_UB).
int TagUpperBound(MPI_Comm comm);

// Element count that fits MPI's int count arguments.
absl::Status CountOf(const CallSite& site, const char* arg, int64_t elements, int* count);

std::string ShapeString(DataType dtype, const TensorShape& shape);

// Raw bytes of a tensor, as MPI's void* buffers want them.
inline char* DataOf(const Tensor& t) { return const_cast<char*>(t.tensor_data().data()); }

// ---- waiting.cc ----
// Waits for all requests. With ADCME_MPI_TIMEOUT=<seconds> set, a wait longer
// than that aborts the whole job with a message naming the op, the rank and
// `waiting_for` (the peers). Polls politely so oversubscribed ranks progress.
// `statuses`, if given, receives the requests' statuses (also when one failed).
// `between_polls`, if given, runs after each unsuccessful poll; an error from
// it ends the wait (the requests stay active: see AbandonRequests).
absl::Status WaitAll(const CallSite& site, std::vector<MPI_Request>* requests,
                     const std::string& waiting_for, std::vector<MPI_Status>* statuses = nullptr,
                     const std::function<absl::Status()>& between_polls = nullptr);
// Requests a failed op leaves behind: the receives (indices `receives`) are
// cancelled, so they cannot take a later op's message, and all are left to
// complete later (as detached sends do) with `buffers` kept alive, so MPI
// never writes into or reads from memory TF has freed.
void AbandonRequests(std::vector<MPI_Request>* requests, const std::vector<size_t>& receives,
                     const std::vector<Tensor>& buffers);
absl::Status WaitOne(const CallSite& site, MPI_Request request, const std::string& waiting_for);
// Blocking matched probe with the same watchdog; returns the message handle.
absl::Status ProbeMessage(const CallSite& site, int source, int tag, MPI_Message* message,
                          MPI_Status* status, const std::string& waiting_for);
// Sends that must never block (the backward of a receive) are started and
// left here; they complete as later ops poll, and all at mpi_finalize.
// `what` says what was sent, for the end-of-program report if it is never received.
void DetachSend(MPI_Request request, const std::vector<Tensor>& keep_alive,
                const std::string& what);
void ProgressDetachedSends();

// ---- checks.cc ----
// Which collective a check is for; names in messages.
// (from the op table, adcme_mpi/op_table.py: kMPISum, kMPIHaloExchange, ...;
// ops without a check have 0)
#define ADCME_MPI_OP_KIND(type, name, gradient_of, kind) k##type = kind,
enum class OpKind : int64_t {
  kNone = 0,
  ADCME_MPI_OP_TABLE(ADCME_MPI_OP_KIND) kEndOfProgram = 99,
};
#undef ADCME_MPI_OP_KIND
// The op type of a check kind ("MPISum"), or "" for none.
const char* OpTypeOfKind(int64_t kind);
// Data of at most kInlineBytes travels inside the check itself. Measured
// (benchmarks/inline_threshold.c, CHECKS.md): inline beats a separate
// collective up to 4 KiB (16-28% less) and loses from 8 KiB; but every check
// carries a packet of this size, and above 256 B the padding costs the checks
// that carry no data 4-24%, the 8-byte sums included.
constexpr int kInlineBytes = 256;
// A collective small enough to ride in its check's reduction: mpi_sum and
// mpi_allreduce (sum = true) or mpi_bcast (the root's value). `done` is set
// when the data arrived that way, and the collective itself is skipped.
struct Carried {
  const Tensor* input = nullptr;  // this rank's contribution
  bool sum = false;               // sum over ranks; else the root's input
  bool is_root = false;
  char* output = nullptr;  // where the result goes (may be input's buffer); null: keep
  bool done = false;
  static bool Fits(const Tensor& t);
};
// Every checked collective on a communicator family (the user's communicator,
// its forward and gradient duplicates) gets the next sequence number. All
// ranks reduce a digest of (op, direction, sequence number, `payload`); in
// the common case that is all, and `rows` stays empty. If any rank's digest
// differs, all allgather their full payload:
// ranks at different collectives get an error naming what each rank is doing;
// otherwise `rows` receives everyone's payload for the caller's own message.
absl::Status AgreeAcrossRanks(const CallSite& site, OpKind kind,
                              const std::vector<int64_t>& payload,
                              std::vector<std::vector<int64_t>>* rows, Carried* carried = nullptr);
// The usual check for a collective's data argument: same dtype and shape
// everywhere, and the same root (root < 0: none). With `carried`, small data
// travels with the check (see Carried).
absl::Status CheckSameAcrossRanks(const CallSite& site, OpKind kind, const char* arg,
                                  const Tensor& t, int root, Carried* carried = nullptr);

// Deferred checks (the halo exchange; see checks.cc): the op's check is
// posted and left in flight; its verdict arrives while later ops wait, or
// before any blocking check. `explain` turns every rank's payload into the
// op's message when they differ. `sequence` receives the check's number
// (-1: no check was posted). Unregistered communicators check at once.
using ExplainRows = std::function<absl::Status(const std::vector<std::vector<int64_t>>&)>;
absl::Status PostDeferredCheck(const CallSite& site, OpKind kind,
                               const std::vector<int64_t>& payload, ExplainRows explain,
                               int64_t* sequence);
// Completes the deferred checks of `site`'s family: those already complete,
// or (block) all of them. A disagreement comes back as the posting op's
// message, prefixed with `site` unless it is check number `own_sequence`.
absl::Status SettleDeferredChecks(const CallSite& site, bool block, int64_t own_sequence);

// ---- shape functions ----
// Adds the ordering token to a shape function: the last input must be a
// scalar and the last output is one.
template <absl::Status (*Fn)(InferenceContext*)>
absl::Status WithToken(InferenceContext* c) {
  tensorflow::shape_inference::ShapeHandle unused;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(c->num_inputs() - 1), 0, &unused));
  TF_RETURN_IF_ERROR(Fn(c));
  c->set_output(c->num_outputs() - 1, c->Scalar());
  return absl::OkStatus();
}
// Inputs 1.. up to the token are scalars (root, peer, tag).
absl::Status ScalarInputs(InferenceContext* c, int first, int last);

}  // namespace adcme_mpi

// Interface shared by every op: data types, communicators, the token.
#define ADCME_MPI_DATA_TYPES "T: {float, double, int32, int64}"

// Kernel registration: CPU, with the small scalar inputs in host memory.
#define ADCME_MPI_CPU_KERNEL(op) \
  Name(op).Device(::tensorflow::DEVICE_CPU).HostMemory("token").HostMemory("token_out")

#endif  // ADCME_MPI_OPS_COMMON_H_
