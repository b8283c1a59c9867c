// The kernel base (kernel.h) and the one MPI thread.
#include "kernel.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "c_api.h"
#include "checks.h"
#include "common.h"
#include "wait.h"

namespace adcme_mpi {
namespace {

// One thread runs every MPI kernel, first come first served (ADCME_MPI_THREAD=1).
// It is never joined: the process may exit while it sleeps.
class MpiThread {
 public:
  static MpiThread& Get() {
    static MpiThread* instance = new MpiThread();  // leaked on purpose
    return *instance;
  }
  void Enqueue(std::function<void()> work) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(std::move(work));
      pending_.store(true, std::memory_order_release);
    }
    cv_.notify_one();
  }

 private:
  MpiThread() {
    std::thread([this] { Loop(); }).detach();
  }
  void Loop() {
    for (;;) {
      // MPI ops of one graph come back to back: after each one, watch the
      // queue briefly before sleeping, so the next op skips a thread wake-up.
      // Only when every rank has a core: oversubscribed, spinning would take
      // the core from a rank that has work.
      if (!GetSettings().oversubscribed) {
        const auto spin_until = std::chrono::steady_clock::now() + std::chrono::microseconds(200);
        while (!pending_.load(std::memory_order_acquire) &&
               std::chrono::steady_clock::now() < spin_until) {
        }
      }
      std::function<void()> work;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return !queue_.empty(); });
        work = std::move(queue_.front());
        queue_.pop_front();
        pending_.store(!queue_.empty(), std::memory_order_release);
      }
      work();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  std::atomic<bool> pending_{false};
};

}  // namespace

absl::Status ScalarInputs(InferenceContext* c, int first, int last) {
  tensorflow::shape_inference::ShapeHandle unused;
  for (int i = first; i <= last; ++i) TF_RETURN_IF_ERROR(c->WithRank(c->input(i), 0, &unused));
  return absl::OkStatus();
}

MpiKernel::MpiKernel(OpKernelConstruction* c)
    : AsyncOpKernel(c),
      kind_(KindOfOpType(c->def().op())),
      buffer_policy_(BufferPolicyOfOpType(c->def().op())) {
  OP_REQUIRES_OK(c, c->GetAttr("comm", &comm_handle_));
}

// Where kernels run. Default: inline on the TF thread that reaches them, as
// synchronous kernels (a few microseconds per op). The ordering token keeps
// at most one MPI op of a program in flight, so a blocking wait holds at most
// one inter-op thread. ADCME_MPI_THREAD=1 moves all MPI work to one dedicated
// thread instead (TF threads stay free to overlap computation; each op pays a
// hand-off, ~50 us), through the asynchronous interface.
tensorflow::AsyncOpKernel* MpiKernel::AsAsync() {
  return GetSettings().mpi_thread ? this : nullptr;
}

bool MpiKernel::IsExpensive() { return GetSettings().mpi_thread; }

void MpiKernel::Compute(OpKernelContext* ctx) {
  if (GetSettings().mpi_thread) {
    AsyncOpKernel::Compute(ctx);  // (only if TF calls it anyway: waits for the MPI thread)
    return;
  }
  Work(ctx);
}

void MpiKernel::ComputeAsync(OpKernelContext* ctx, DoneCallback done) {
  if (!GetSettings().mpi_thread) {
    Work(ctx);
    done();
    return;
  }
  MpiThread::Get().Enqueue([this, ctx, done] {
    Work(ctx);
    done();
  });
}

absl::Status MpiKernel::PrepareSite() {
  std::call_once(site_once_, [this] {
    site_.comm = MPI_Comm_f2c(static_cast<MPI_Fint>(comm_handle_));
    std::shared_ptr<CommFamily> family = FamilyOf(site_.comm, &site_.backward);
    family_ = family;
    site_.family = family.get();
    site_.op = UserFacingName(type_string(), site_.backward);
    site_status_ = site_.Check(MPI_Comm_rank(site_.comm, &site_.rank), "MPI_Comm_rank");
    if (site_status_.ok()) {
      site_status_ = site_.Check(MPI_Comm_size(site_.comm, &site_.size), "MPI_Comm_size");
    }
  });
  return site_status_;
}

absl::Status MpiReady(const std::string& op_type) {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (!initialized || finalized)
    return absl::FailedPreconditionError(
        absl::StrCat(UserFacingName(op_type, false), ": MPI is ",
                     finalized ? "already finalized" : "not initialized",
                     "; call adcme_mpi.mpi_init() first and mpi_finalize() only at the end"));
  return absl::OkStatus();
}

absl::Status MpiKernel::RunChecked(OpKernelContext* ctx) {
  TF_RETURN_IF_ERROR(MpiReady(type_string()));
  OpInFlight flight;
  if (flight.refused())
    return absl::FailedPreconditionError(
        absl::StrCat(UserFacingName(type_string(), false),
                     ": mpi_finalize has begun; no op may start any more"));
  TF_RETURN_IF_ERROR(PrepareSite());
  // held for this run: mpi_finalize cannot free the family under it
  const std::shared_ptr<CommFamily> family = family_.lock();
  if (site_.family != nullptr && family == nullptr)
    return absl::FailedPreconditionError(
        absl::StrCat(site_.Describe(), ": its communicator was released by mpi_finalize"));
  ProgressDetachedSends();
  const int64_t steps = CheckStepsOnThisThread();
  absl::Status status = Run(ctx, site_);
  if (!status.ok() && kind_ != OpKind::kNone && CheckStepsOnThisThread() == steps)
    status = ShareLocalFailure(site_, kind_, status);
  return status;
}

absl::Status MpiKernel::OutputBuffer(OpKernelContext* ctx, int index, const TensorShape& shape,
                                     Tensor** out) {
  if (buffer_policy_ == BufferPolicy::kInput && index == 0 &&
      ctx->forward_input_to_output_with_shape(0, 0, shape, out))
    return absl::OkStatus();
  return ctx->allocate_output(index, shape, out);
}

void MpiKernel::Work(OpKernelContext* ctx) {
  absl::Status status = RunChecked(ctx);
  if (status.ok()) {
    Tensor* token = nullptr;
    status = ctx->allocate_output(ctx->num_outputs() - 1, TensorShape({}), &token);
    if (status.ok()) token->scalar<float>()() = 0.0f;
  }
  if (!status.ok()) ctx->SetStatus(status);
}

}  // namespace adcme_mpi

// For the import-time check that the ops and mpi4py share one libmpi:
// "<MPI_Get_library_version>\x1f<path of the shared object defining MPI_Init>".
#include <dlfcn.h>
ADCME_MPI_C_API int adcme_mpi_libmpi_info(char* buffer, int length) {
  char version[MPI_MAX_LIBRARY_VERSION_STRING];
  int version_length = 0;
  MPI_Get_library_version(version, &version_length);
  Dl_info info;
  const char* path =
      dladdr(reinterpret_cast<void*>(&MPI_Init), &info) && info.dli_fname ? info.dli_fname : "?";
  return std::snprintf(buffer, length, "%s\x1f%s", std::string(version, version_length).c_str(),
                       path);
}
