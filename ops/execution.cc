// Settings, the kernel base (where kernels run), CallSite, argument helpers
// and the communicator registry (which communicators are gradient ones and
// where their cross-rank checks go).
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/substitute.h"
#include "c_api.h"
#include "common.h"
#include "registry.h"

namespace adcme_mpi {
namespace {

bool EnvIs(const char* name, const char* value) {
  const char* v = std::getenv(name);
  return v && std::string(v) == value;
}

// More ranks on this node than cores? Read from the launcher's environment
// (MPICH/hydra: MPI_LOCALNRANKS, Open MPI: OMPI_COMM_WORLD_LOCAL_SIZE);
// ADCME_MPI_OVERSUBSCRIBED=0/1 overrides. Unknown counts as oversubscribed.
bool ReadOversubscribed() {
  if (const char* v = std::getenv("ADCME_MPI_OVERSUBSCRIBED")) return std::string(v) != "0";
  const char* local = std::getenv("MPI_LOCALNRANKS");
  if (!local) local = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
  if (!local) return true;
  const unsigned cores = std::thread::hardware_concurrency();
  return cores == 0 || static_cast<unsigned>(std::atoi(local)) > cores;
}

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

std::mutex registry_mu;
std::map<MPI_Comm, CommRoute>& Routes() {
  static auto* routes = new std::map<MPI_Comm, CommRoute>();
  return *routes;
}

}  // namespace

std::string UserFacingName(const std::string& op_type, bool backward) {
  // op type -> (its name in messages, the name of the op it is the gradient of)
  static const auto* names = new std::map<std::string, std::pair<std::string, std::string>>{
#define ADCME_MPI_OP_NAMES(type, name, gradient_of, kind) {#type, {name, gradient_of}},
      ADCME_MPI_OP_TABLE(ADCME_MPI_OP_NAMES)
#undef ADCME_MPI_OP_NAMES
  };
  auto it = names->find(op_type);
  if (it == names->end()) return op_type;
  return backward ? absl::StrCat("gradient of ", it->second.second) : it->second.first;
}

const char* OpTypeOfKind(int64_t kind) {
#define ADCME_MPI_OP_TYPE(type, name, gradient_of, k) \
  if (k != 0 && kind == k) return #type;
  ADCME_MPI_OP_TABLE(ADCME_MPI_OP_TYPE)
#undef ADCME_MPI_OP_TYPE
  return "";
}

const Settings& GetSettings() {
  static const Settings settings = [] {
    Settings s;
    s.check = !EnvIs("ADCME_MPI_CHECK", "0");
    s.mpi_thread = EnvIs("ADCME_MPI_THREAD", "1");
    const char* t = std::getenv("ADCME_MPI_TIMEOUT");
    s.timeout = t ? std::atof(t) : 0.0;
    s.oversubscribed = ReadOversubscribed();
    return s;
  }();
  return settings;
}

CommRoute RouteOf(MPI_Comm comm) {
  std::lock_guard<std::mutex> lock(registry_mu);
  auto it = Routes().find(comm);
  if (it != Routes().end()) return it->second;
  return CommRoute{comm, false, nullptr, nullptr};
}

int64_t NextSequenceNumber(const CommRoute& route) {
  std::lock_guard<std::mutex> lock(registry_mu);
  return route.sequence ? ++*route.sequence : 0;
}

std::string CallSite::Describe() const {
  return absl::StrCat(op, " (rank ", rank, " of ", size, ")");
}

absl::Status CallSite::Check(int rc, const char* mpi_function) const {
  if (rc == MPI_SUCCESS) return absl::OkStatus();
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS) len = 0;
  return absl::InternalError(
      absl::StrCat(Describe(), " | ", mpi_function, " failed: ", std::string(text, len)));
}

absl::Status CallSite::InvalidArgument(const std::string& what) const {
  return absl::InvalidArgumentError(absl::StrCat(Describe(), ": ", what));
}

std::string ShapeString(DataType dtype, const TensorShape& shape) {
  return absl::StrCat(tensorflow::DataTypeString(dtype), shape.DebugString());
}

absl::Status CountOf(const CallSite& site, const char* arg, int64_t elements, int* count) {
  if (elements > INT32_MAX)
    return site.InvalidArgument(absl::StrCat("argument '", arg, "' has ", elements,
                                             " elements; at most 2^31-1 per message"));
  *count = static_cast<int>(elements);
  return absl::OkStatus();
}

absl::Status DatatypeArg(const CallSite& site, const char* arg, const Tensor& t,
                         MPI_Datatype* out) {
  switch (t.dtype()) {
    case tensorflow::DT_FLOAT: *out = MPI_FLOAT; return absl::OkStatus();
    case tensorflow::DT_DOUBLE: *out = MPI_DOUBLE; return absl::OkStatus();
    case tensorflow::DT_INT32: *out = MPI_INT32_T; return absl::OkStatus();
    case tensorflow::DT_INT64: *out = MPI_INT64_T; return absl::OkStatus();
    default:
      return site.InvalidArgument(absl::Substitute(
          messages::kDtype, arg, tensorflow::DataTypeString(t.dtype()), messages::kDataDtypes));
  }
}

int TagUpperBound(MPI_Comm comm) {
  // MPI_TAG_UB is only guaranteed on MPI_COMM_WORLD (Open MPI leaves it off dups).
  for (MPI_Comm c : {comm, MPI_COMM_WORLD}) {
    int* value = nullptr;
    int flag = 0;
    if (MPI_Comm_get_attr(c, MPI_TAG_UB, &value, &flag) == MPI_SUCCESS && flag && value)
      return *value;
  }
  return 32767;  // the smallest upper bound the standard allows
}

absl::Status ScalarIntArg(OpKernelContext* ctx, int index, const char* name, int64_t lo, int64_t hi,
                          const CallSite& site, int* out) {
  const Tensor& t = ctx->input(index);
  if (t.dims() != 0)
    return site.InvalidArgument(absl::StrCat("argument '", name, "' must be a scalar, got shape ",
                                             t.shape().DebugString()));
  const int64_t v = t.scalar<int32_t>()();  // the op interfaces declare int32
  if (v < lo || v > hi)
    return site.InvalidArgument(absl::Substitute(messages::kOutOfRange, name, v, lo, hi));
  *out = static_cast<int>(v);
  return absl::OkStatus();
}

absl::Status ScalarInputs(InferenceContext* c, int first, int last) {
  tensorflow::shape_inference::ShapeHandle unused;
  for (int i = first; i <= last; ++i) TF_RETURN_IF_ERROR(c->WithRank(c->input(i), 0, &unused));
  return absl::OkStatus();
}

MpiKernel::MpiKernel(OpKernelConstruction* c) : AsyncOpKernel(c) {
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

absl::StatusOr<const CallSite*> MpiKernel::Site() {
  std::call_once(site_once_, [this] {
    site_.comm = MPI_Comm_f2c(static_cast<MPI_Fint>(comm_handle_));
    const CommRoute route = RouteOf(site_.comm);
    site_.backward = route.backward;
    site_.check_comm = route.check;
    site_.op = UserFacingName(type_string(), site_.backward);
    site_status_ = site_.Check(MPI_Comm_rank(site_.comm, &site_.rank), "MPI_Comm_rank");
    if (site_status_.ok()) {
      site_status_ = site_.Check(MPI_Comm_size(site_.comm, &site_.size), "MPI_Comm_size");
    }
  });
  if (!site_status_.ok()) return site_status_;
  return &site_;
}

void MpiKernel::Work(OpKernelContext* ctx) {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (!initialized || finalized) {
    ctx->SetStatus(absl::FailedPreconditionError(
        absl::StrCat(UserFacingName(type_string(), false), ": MPI is ",
                     finalized ? "already finalized" : "not initialized",
                     "; call adcme_mpi.mpi_init() first and mpi_finalize() only at the end")));
    return;
  }
  ProgressDetachedSends();
  absl::StatusOr<const CallSite*> site = Site();
  absl::Status status = site.ok() ? Run(ctx, **site) : site.status();
  if (status.ok()) {
    Tensor* token = nullptr;
    status = ctx->allocate_output(ctx->num_outputs() - 1, TensorShape({}), &token);
    if (status.ok()) token->scalar<float>()() = 0.0f;
  }
  if (!status.ok()) ctx->SetStatus(status);
}

}  // namespace adcme_mpi

// ---- C entry points for the Python runtime (ctypes) ----

// Registers the duplicates of one user communicator: forward messages,
// gradient messages, and the one all their cross-rank checks share (so a
// rank in a forward op and a rank in a gradient op see each other's op).
ADCME_MPI_C_API void adcme_mpi_register_comms(int64_t forward, int64_t backward, int64_t check) {
  using namespace adcme_mpi;
  std::lock_guard<std::mutex> lock(registry_mu);
  auto* sequence = new int64_t(0);  // shared by the family; leaked when forgotten (a few bytes)
  const MPI_Comm check_comm = MPI_Comm_f2c(static_cast<MPI_Fint>(check));
  CheckQueue* deferred = NewCheckQueue(check_comm);
  Routes()[MPI_Comm_f2c(static_cast<MPI_Fint>(forward))] =
      CommRoute{check_comm, false, sequence, deferred};
  Routes()[MPI_Comm_f2c(static_cast<MPI_Fint>(backward))] =
      CommRoute{check_comm, true, sequence, deferred};
  Routes()[check_comm] = CommRoute{check_comm, false, sequence, deferred};
}

ADCME_MPI_C_API void adcme_mpi_forget_comms() {
  std::lock_guard<std::mutex> lock(adcme_mpi::registry_mu);
  adcme_mpi::FreeCheckQueues();
  adcme_mpi::Routes().clear();
}

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
