#include "mpi_common.h"

#include <sched.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"

namespace adcme_mpi {
namespace {

// More ranks on this node than cores? Read from the launcher's environment
// (MPICH/hydra: MPI_LOCALNRANKS, Open MPI: OMPI_COMM_WORLD_LOCAL_SIZE);
// ADCME_MPI_OVERSUBSCRIBED=0/1 overrides. Unknown counts as oversubscribed.
bool Oversubscribed() {
  static const bool value = [] {
    if (const char* v = std::getenv("ADCME_MPI_OVERSUBSCRIBED")) return std::string(v) != "0";
    const char* local = std::getenv("MPI_LOCALNRANKS");
    if (!local) local = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
    if (!local) return true;
    const unsigned cores = std::thread::hardware_concurrency();
    return cores == 0 || static_cast<unsigned>(std::atoi(local)) > cores;
  }();
  return value;
}

// One thread runs every MPI kernel, first come first served. It is never
// joined: the process may exit while it sleeps on the condition variable.
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
  MpiThread() { std::thread([this] { Loop(); }).detach(); }
  void Loop() {
    for (;;) {
      // MPI ops of one graph come back to back: after each one, watch the
      // queue for a short while before sleeping, so the next op does not pay
      // for a thread wake-up.
      // Only when every rank on this node has a core: oversubscribed, the
      // spinning would take the core from a rank that has work.
      if (!Oversubscribed()) {
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

double TimeoutSeconds() {
  static const double seconds = [] {
    const char* v = std::getenv("ADCME_MPI_TIMEOUT");
    return v ? std::atof(v) : 0.0;
  }();
  return seconds;
}

[[noreturn]] void WatchdogAbort(const CallSite& site, const std::string& waiting_for,
                                double waited) {
  std::fprintf(stderr,
               "adcme_mpi watchdog: %s waited %.1f s (ADCME_MPI_TIMEOUT=%g) for %s; "
               "aborting the job\n",
               site.Describe().c_str(), waited, TimeoutSeconds(), waiting_for.c_str());
  std::fflush(stderr);
  // Give mpiexec a moment to forward the message before the job is torn down.
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  MPI_Abort(MPI_COMM_WORLD, 124);
  std::abort();
}

// Spin briefly (lowest latency when every rank has a core), then yield the
// core between polls (progress when ranks outnumber cores).
class Poller {
 public:
  explicit Poller(const CallSite& site, const std::string& waiting_for)
      : site_(site), waiting_for_(waiting_for), start_(Clock::now()) {}
  void Pause() {
    if (++polls_ < 2000) return;
    if (polls_ % 64 == 0) {
      double waited = std::chrono::duration<double>(Clock::now() - start_).count();
      if (TimeoutSeconds() > 0 && waited > TimeoutSeconds())
        WatchdogAbort(site_, waiting_for_, waited);
    }
    if (!Oversubscribed()) return;  // a core each: keep polling, lowest latency
    if (polls_ < 20000) {
      sched_yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

 private:
  using Clock = std::chrono::steady_clock;
  const CallSite& site_;
  const std::string& waiting_for_;
  Clock::time_point start_;
  int64_t polls_ = 0;
};

}  // namespace

absl::Status MpiDatatypeFor(DataType dtype, MPI_Datatype* out) {
  switch (dtype) {
    case tensorflow::DT_FLOAT: *out = MPI_FLOAT; return absl::OkStatus();
    case tensorflow::DT_DOUBLE: *out = MPI_DOUBLE; return absl::OkStatus();
    case tensorflow::DT_INT32: *out = MPI_INT32_T; return absl::OkStatus();
    case tensorflow::DT_INT64: *out = MPI_INT64_T; return absl::OkStatus();
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "dtype ", tensorflow::DataTypeString(dtype),
          " is not supported (float32, float64, int32, int64)"));
  }
}

std::string CallSite::Describe() const {
  return absl::StrCat(op, " (rank ", rank, " of ", size, ")");
}

absl::Status CallSite::Check(int rc, const char* mpi_function) const {
  if (rc == MPI_SUCCESS) return absl::OkStatus();
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS) len = 0;
  return absl::InternalError(absl::StrCat(Describe(), " | ", mpi_function,
                                          " failed: ", std::string(text, len)));
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

bool MetadataChecksEnabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("ADCME_MPI_CHECK");
    return !(v && std::string(v) == "0");
  }();
  return enabled;
}

MpiKernel::MpiKernel(OpKernelConstruction* c) : AsyncOpKernel(c) {
  OP_REQUIRES_OK(c, c->GetAttr("comm", &comm_handle_));
}

// Where kernels run. Default: inline on the TF thread that starts them (a
// few microseconds per op). The Python wrappers chain MPI ops in program
// order, so at most one MPI op per graph is in flight and a blocking wait can
// hold at most one inter-op thread. ADCME_MPI_THREAD=1 moves all MPI work to
// one dedicated thread instead (TF threads stay free to overlap computation
// with communication; each op then pays a thread hand-off, ~50 us here).
bool RunOnMpiThread() {
  static const bool value = [] {
    const char* v = std::getenv("ADCME_MPI_THREAD");
    return v && std::string(v) == "1";
  }();
  return value;
}

void MpiKernel::ComputeAsync(OpKernelContext* ctx, DoneCallback done) {
  auto work = [this, ctx, done] {
    CallSite site;
    site.op = type_string();
    int initialized = 0, finalized = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (!initialized || finalized) {
      ctx->SetStatus(absl::FailedPreconditionError(absl::StrCat(
          site.op, ": MPI is ", finalized ? "already finalized" : "not initialized",
          "; call adcme_mpi.mpi_init() first and mpi_finalize() only at the end")));
      done();
      return;
    }
    site.comm = MPI_Comm_f2c(static_cast<MPI_Fint>(comm_handle_));
    absl::Status status = site.Check(MPI_Comm_rank(site.comm, &site.rank), "MPI_Comm_rank");
    if (status.ok()) status = site.Check(MPI_Comm_size(site.comm, &site.size), "MPI_Comm_size");
    if (status.ok()) status = Run(ctx, site);
    if (!status.ok()) ctx->SetStatus(status);
    done();
  };
  if (RunOnMpiThread()) {
    MpiThread::Get().Enqueue(std::move(work));
  } else {
    work();
  }
}

absl::Status MpiKernel::ScalarIntArg(OpKernelContext* ctx, int index, const char* name,
                                     int64_t lo, int64_t hi, const CallSite& site,
                                     int* out) const {
  const Tensor& t = ctx->input(index);
  if (t.dims() != 0)
    return site.InvalidArgument(absl::StrCat("argument '", name, "' must be a scalar, got shape ",
                                             t.shape().DebugString()));
  int64_t v = t.dtype() == tensorflow::DT_INT64 ? t.scalar<int64_t>()() : t.scalar<int32_t>()();
  if (v < lo || v > hi)
    return site.InvalidArgument(absl::StrCat("argument '", name, "' = ", v,
                                             " is out of range [", lo, ", ", hi, "]"));
  *out = static_cast<int>(v);
  return absl::OkStatus();
}

absl::Status AllgatherMetadata(const CallSite& site, const std::vector<int64_t>& mine,
                               std::vector<std::vector<int64_t>>* rows) {
  const int width = static_cast<int>(mine.size());
  std::vector<int64_t> all(static_cast<size_t>(width) * site.size);
  MPI_Request request;
  ADCME_MPI_RETURN_IF_ERROR(site.Check(
      MPI_Iallgather(mine.data(), width, MPI_INT64_T, all.data(), width, MPI_INT64_T,
                     site.comm, &request),
      "MPI_Iallgather"));
  std::vector<MPI_Request> requests{request};
  std::vector<MPI_Status> statuses(1);
  ADCME_MPI_RETURN_IF_ERROR(WaitAll(site, &requests, &statuses, "every rank (metadata check)"));
  rows->assign(site.size, {});
  for (int r = 0; r < site.size; ++r)
    (*rows)[r].assign(all.begin() + r * width, all.begin() + (r + 1) * width);
  return absl::OkStatus();
}

absl::Status CheckSameAcrossRanks(const CallSite& site, const char* arg, const Tensor& t,
                                  int root) {
  if (!MetadataChecksEnabled() || site.size == 1) return absl::OkStatus();
  constexpr int kMaxDims = 8;
  // Row: dtype, root, ndims, hash of all dims, first kMaxDims dims.
  std::vector<int64_t> mine(4 + kMaxDims, -1);
  mine[0] = t.dtype();
  mine[1] = root;
  mine[2] = t.dims();
  uint64_t hash = 1469598103934665603ULL;
  for (int d = 0; d < t.dims(); ++d) {
    hash = (hash ^ static_cast<uint64_t>(t.dim_size(d))) * 1099511628211ULL;
    if (d < kMaxDims) mine[4 + d] = t.dim_size(d);
  }
  mine[3] = static_cast<int64_t>(hash >> 1);
  std::vector<std::vector<int64_t>> rows;
  ADCME_MPI_RETURN_IF_ERROR(AllgatherMetadata(site, mine, &rows));
  bool same_tensor = true, same_root = true;
  for (const auto& row : rows) {
    if (row[0] != mine[0] || row[2] != mine[2] || row[3] != mine[3]) same_tensor = false;
    if (row[1] != mine[1]) same_root = false;
  }
  if (same_tensor && same_root) return absl::OkStatus();
  std::ostringstream msg;
  if (!same_tensor) {
    msg << "argument '" << arg << "' must have the same dtype and shape on every rank; got";
    for (int r = 0; r < site.size; ++r) {
      TensorShape shape;
      for (int d = 0; d < rows[r][2] && d < kMaxDims; ++d) shape.AddDim(rows[r][4 + d]);
      msg << (r ? ", " : " ") << "rank " << r << ": "
          << ShapeString(static_cast<DataType>(rows[r][0]), shape);
    }
  } else {
    msg << "argument 'root' must be the same on every rank; got";
    for (int r = 0; r < site.size; ++r) msg << (r ? ", " : " ") << "rank " << r << ": " << rows[r][1];
  }
  return site.InvalidArgument(msg.str());
}

absl::Status WaitAll(const CallSite& site, std::vector<MPI_Request>* requests,
                     std::vector<MPI_Status>* statuses, const std::string& waiting_for) {
  statuses->resize(requests->size());
  if (requests->empty()) return absl::OkStatus();
  Poller poller(site, waiting_for);
  for (;;) {
    int done = 0;
    int rc = MPI_Testall(static_cast<int>(requests->size()), requests->data(), &done,
                         statuses->data());
    if (rc == MPI_ERR_IN_STATUS) {
      for (const MPI_Status& st : *statuses)
        if (st.MPI_ERROR != MPI_SUCCESS && st.MPI_ERROR != MPI_ERR_PENDING)
          return site.Check(st.MPI_ERROR, "MPI_Testall");
    }
    ADCME_MPI_RETURN_IF_ERROR(site.Check(rc, "MPI_Testall"));
    if (done) return absl::OkStatus();
    poller.Pause();
  }
}

absl::Status ProbeMessage(const CallSite& site, int source, int tag, MPI_Message* message,
                          MPI_Status* status, const std::string& waiting_for) {
  Poller poller(site, waiting_for);
  for (;;) {
    int found = 0;
    ADCME_MPI_RETURN_IF_ERROR(
        site.Check(MPI_Improbe(source, tag, site.comm, &found, message, status), "MPI_Improbe"));
    if (found) return absl::OkStatus();
    poller.Pause();
  }
}

}  // namespace adcme_mpi

// For the import-time check that the ops and mpi4py share one libmpi:
// "<MPI_Get_library_version>\x1f<path of the shared object defining MPI_Init>".
#include <dlfcn.h>
extern "C" __attribute__((visibility("default"))) int adcme_mpi_libmpi_info(char* buffer,
                                                                           int length) {
  char version[MPI_MAX_LIBRARY_VERSION_STRING];
  int version_length = 0;
  MPI_Get_library_version(version, &version_length);
  Dl_info info;
  const char* path = dladdr(reinterpret_cast<void*>(&MPI_Init), &info) && info.dli_fname
                         ? info.dli_fname
                         : "?";
  return std::snprintf(buffer, length, "%s\x1f%s", std::string(version, version_length).c_str(), path);
}
