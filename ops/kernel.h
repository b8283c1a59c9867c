// The base of every MPI kernel (kernel.cc): where it runs (inline, or on
// the one MPI thread), its call site, its op in flight, and the shared
// error style: a checked op whose input is bad on one rank fails on every
// rank (checks.h, ShareLocalFailure). Depends on core, wait, family, checks.
#ifndef ADCME_MPI_OPS_KERNEL_H_
#define ADCME_MPI_OPS_KERNEL_H_

#include <cstdint>
#include <memory>
#include <mutex>

#include "absl/status/status.h"
#include "core.h"
#include "family.h"

namespace adcme_mpi {

// Subclasses implement Run(). By default it runs inline, as a synchronous
// kernel (TensorFlow's cheapest dispatch: no async bookkeeping, no hand-off
// to another thread); with ADCME_MPI_THREAD=1 it is an asynchronous kernel
// whose work runs on one dedicated MPI thread that keeps blocking MPI calls
// off TF's inter-op pool. Either way kernels reach MPI in the order TF
// starts them, which the ordering token makes program order.
//
// Error style: Run validates its input locally before its cross-rank
// check. If Run fails before its check was posted, the base takes part in
// that check with the failure, so the peers fail too, naming this rank,
// instead of waiting for it. Every message starts with "op (rank r of n)".
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

  // Data output `index` of `shape`, which the kernel writes whole (its old
  // values are never read), where the op table's `buffer` says (BUFFERS in
  // adcme_mpi/op_table.py): for "input", output 0 goes into input 0's own
  // buffer when TensorFlow can hand it over (nothing else reads it, so it
  // is never a tensor anything still holds); otherwise a new buffer.
  // (Buffers kept by the kernel from run to run measured slower:
  // benchmarks/LARGE_BUFFERS.md.)
  absl::Status OutputBuffer(OpKernelContext* ctx, int index, const TensorShape& shape,
                            Tensor** out);

 private:
  void Work(OpKernelContext* ctx);
  absl::Status RunChecked(OpKernelContext* ctx);
  // The op's name, communicators, rank and size: built on the first run (the
  // communicator is registered by then) and the same for every later one.
  absl::Status PrepareSite();

  int64_t comm_handle_;
  const OpKind kind_;  // the op table's check kind of this op type (kNone: unchecked)
  std::once_flag site_once_;
  CallSite site_;
  std::weak_ptr<CommFamily> family_;  // only while a run holds it (family.h)
  absl::Status site_status_;
  const BufferPolicy buffer_policy_;  // the op table's, for this op type
};

// OK when MPI is initialized and not finalized; otherwise the error every
// kernel of `op_type` returns then (also the XLA lowering's, at compile time).
absl::Status MpiReady(const std::string& op_type);

}  // namespace adcme_mpi

#endif  // ADCME_MPI_OPS_KERNEL_H_
