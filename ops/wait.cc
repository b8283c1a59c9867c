// The wait service (wait.h): polling, the watchdog, closing, request sets,
// detached sends.
#include "wait.h"

#include <sched.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <map>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "c_api.h"

namespace adcme_mpi {
namespace {

using Clock = std::chrono::steady_clock;

double Now() { return std::chrono::duration<double>(Clock::now().time_since_epoch()).count(); }

// ---- the watchdog: one thread, started by the first watched section ----

struct Section {
  double started, timeout;
  std::string who, waiting_for;
};

// Lock order: watch_mu is a leaf (nothing else is taken while it is held).
std::mutex watch_mu;
std::map<int64_t, Section>& Sections() {
  static auto* sections = new std::map<int64_t, Section>();
  return *sections;
}
int64_t next_section = 0;
bool watchdog_started = false;

[[noreturn]] void WatchdogAbort(const Section& s, double waited) {
  char limit[64];
  if (s.timeout == GetSettings().timeout) {
    std::snprintf(limit, sizeof limit, "ADCME_MPI_TIMEOUT=%g", s.timeout);
  } else {
    std::snprintf(limit, sizeof limit, "limit %g s", s.timeout);
  }
  std::fprintf(stderr, "adcme_mpi watchdog: %s waited %.1f s (%s) for %s; aborting the job\n",
               s.who.c_str(), waited, limit, s.waiting_for.c_str());
  std::fflush(stderr);
  // Give mpiexec a moment to forward the message before the job is torn down.
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  MPI_Abort(MPI_COMM_WORLD, 124);
  std::abort();
}

// Wakes every 50 ms (a watchdog measures seconds) and ends the job when a
// section has been open too long. Never joined: the process may exit while
// it sleeps.
void WatchdogLoop() {
  for (;;) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    const double now = Now();
    std::unique_lock<std::mutex> lock(watch_mu);
    for (const auto& entry : Sections()) {
      const Section& s = entry.second;
      if (now - s.started > s.timeout) {
        const Section expired = s;
        lock.unlock();
        WatchdogAbort(expired, now - expired.started);
      }
    }
  }
}

std::atomic<bool> closing{false};

// Spin briefly (lowest latency when every rank has a core), then yield the
// core between polls (progress when ranks outnumber cores). A wait that is
// not quick opens a watched section, backdated to its start; a wait in
// progress when mpi_finalize begins ends.
class Poller {
 public:
  Poller(const CallSite& site, const std::string& waiting_for)
      : site_(site), waiting_for_(waiting_for) {}
  absl::Status Pause() {
    if (++polls_ < 2000) return absl::OkStatus();
    if (polls_ == 2000) {
      started_ = Now() - started_guess_;
      watched_ = std::make_unique<WatchedSection>(site_.Describe(), waiting_for_, -1, started_);
    }
    if (polls_ % 64 == 0 && Closing())
      return absl::FailedPreconditionError(
          absl::StrCat(site_.Describe(), ": mpi_finalize was called while this op waited for ",
                       waiting_for_, "; the op is abandoned"));
    if (!GetSettings().oversubscribed) return absl::OkStatus();  // a core each: keep polling
    if (polls_ < 20000) {
      sched_yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    return absl::OkStatus();
  }

 private:
  const CallSite& site_;
  const std::string& waiting_for_;
  int64_t polls_ = 0;
  // 2,000 polls take well under a millisecond: the section starts then.
  static constexpr double started_guess_ = 0.001;
  double started_ = 0;
  std::unique_ptr<WatchedSection> watched_;
};

// ---- detached sends ----

struct DetachedSend {
  MPI_Request request;
  absl::InlinedVector<Tensor, 4> tensors;  // the buffers, alive until the request completes
  std::vector<std::shared_ptr<const void>> others;
  std::string what;  // for the message if it is never received
};
// Lock order: detached_mu is a leaf.
std::mutex detached_mu;
std::vector<DetachedSend>& Detached() {
  static auto* sends = new std::vector<DetachedSend>();
  return *sends;
}

// Drops the detached sends that have completed. Call with detached_mu held.
void DropCompletedSends(std::vector<DetachedSend>* sends) {
  for (size_t i = 0; i < sends->size();) {
    int done = 0;
    MPI_Test(&(*sends)[i].request, &done, MPI_STATUS_IGNORE);
    if (done) {
      (*sends)[i] = std::move(sends->back());
      sends->pop_back();
    } else {
      ++i;
    }
  }
}

}  // namespace

WatchedSection::WatchedSection(const std::string& who, const std::string& waiting_for,
                               double timeout, double started) {
  if (timeout < 0) timeout = GetSettings().timeout;
  if (timeout <= 0) return;
  std::lock_guard<std::mutex> lock(watch_mu);
  if (!watchdog_started) {
    std::thread(WatchdogLoop).detach();
    watchdog_started = true;
  }
  id_ = ++next_section;
  Sections()[id_] = Section{started >= 0 ? started : Now(), timeout, who, waiting_for};
}

WatchedSection::~WatchedSection() {
  if (id_ == 0) return;
  std::lock_guard<std::mutex> lock(watch_mu);
  Sections().erase(id_);
}

void BeginClosing() { closing.store(true); }
bool Closing() { return closing.load(); }

absl::Status WaitAll(const CallSite& site, MPI_Request* requests, int count,
                     const std::string& waiting_for, std::vector<MPI_Status>* statuses_out,
                     const std::function<absl::Status()>& between_polls) {
  if (count == 0) return absl::OkStatus();
  absl::InlinedVector<MPI_Status, 16> statuses(count);
  Poller poller(site, waiting_for);
  for (;;) {
    int done = 0;
    // one request: MPI_Test (MPICH 5.0.2's MPI_Testall reports MPI_ERR_IN_STATUS,
    // with no error in the status, for a completed persistent collective)
    const int rc = count == 1 ? MPI_Test(requests, &done, statuses.data())
                              : MPI_Testall(count, requests, &done, statuses.data());
    if (statuses_out != nullptr && (done || rc == MPI_ERR_IN_STATUS))
      statuses_out->assign(statuses.begin(), statuses.end());
    if (rc == MPI_ERR_IN_STATUS) {
      for (const MPI_Status& st : statuses)
        if (st.MPI_ERROR != MPI_SUCCESS && st.MPI_ERROR != MPI_ERR_PENDING)
          return site.Check(st.MPI_ERROR, "MPI_Testall");
    }
    TF_RETURN_IF_ERROR(site.Check(rc, count == 1 ? "MPI_Test" : "MPI_Testall"));
    if (done) return absl::OkStatus();
    if (between_polls) TF_RETURN_IF_ERROR(between_polls());
    TF_RETURN_IF_ERROR(poller.Pause());
  }
}

absl::Status WaitRequest(const CallSite& site, MPI_Request* request,
                         const std::string& waiting_for) {
  Poller poller(site, waiting_for);
  for (;;) {
    int done = 0;
    TF_RETURN_IF_ERROR(site.Check(MPI_Test(request, &done, MPI_STATUS_IGNORE), "MPI_Test"));
    if (done) return absl::OkStatus();
    TF_RETURN_IF_ERROR(poller.Pause());
  }
}

absl::Status ProbeMessage(const CallSite& site, int source, int tag, MPI_Message* message,
                          MPI_Status* status, const std::string& waiting_for) {
  Poller poller(site, waiting_for);
  for (;;) {
    int found = 0;
    TF_RETURN_IF_ERROR(
        site.Check(MPI_Improbe(source, tag, site.comm, &found, message, status), "MPI_Improbe"));
    if (found) return absl::OkStatus();
    TF_RETURN_IF_ERROR(poller.Pause());
  }
}

MPI_Request* RequestSet::Next(bool receive) {
  if (receive) receives_.push_back(requests_.size());
  requests_.push_back(MPI_REQUEST_NULL);
  return &requests_.back();
}

absl::Status RequestSet::Posted(int rc, const char* mpi_function) {
  if (rc != MPI_SUCCESS) requests_.back() = MPI_REQUEST_NULL;  // a failed call posts nothing
  return site_.Check(rc, mpi_function);
}

absl::Status RequestSet::Wait(const std::string& waiting_for, std::vector<MPI_Status>* statuses,
                              const std::function<absl::Status()>& between_polls) {
  return WaitAll(site_, requests_.data(), static_cast<int>(requests_.size()), waiting_for, statuses,
                 between_polls);
}

void RequestSet::Abandon() {
  bool active = false;
  for (MPI_Request request : requests_) active = active || request != MPI_REQUEST_NULL;
  if (!active) return;
  for (size_t i : receives_)
    if (requests_[i] != MPI_REQUEST_NULL) MPI_Cancel(&requests_[i]);
  std::lock_guard<std::mutex> lock(detached_mu);
  for (MPI_Request request : requests_) {
    if (request == MPI_REQUEST_NULL) continue;
    Detached().push_back({request, tensors_, others_, "a message of an op that failed"});
  }
  requests_.clear();
}

void DetachSend(MPI_Request request, const Tensor& keep_alive, const std::string& what) {
  std::lock_guard<std::mutex> lock(detached_mu);
  Detached().push_back({request, {keep_alive}, {}, what});
}

void ProgressDetachedSends() {
  std::lock_guard<std::mutex> lock(detached_mu);
  DropCompletedSends(&Detached());
}

}  // namespace adcme_mpi

// Called once every rank has reached the end of its program, so no receive
// will be posted any more: waits up to `grace_seconds` for the detached sends
// still in flight, then reports the first one nobody received (the peer's
// backward pass did not include the matching op). Returns how many.
ADCME_MPI_C_API int adcme_mpi_complete_detached_sends(double grace_seconds, char* buffer,
                                                      int length) {
  using namespace adcme_mpi;
  const auto until =
      std::chrono::steady_clock::now() + std::chrono::duration<double>(grace_seconds);
  std::lock_guard<std::mutex> lock(detached_mu);
  auto& sends = Detached();
  for (;;) {
    DropCompletedSends(&sends);
    if (sends.empty() || std::chrono::steady_clock::now() > until) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  const int orphans = static_cast<int>(sends.size());
  if (orphans > 0) {
    std::snprintf(buffer, length, "%s", sends.front().what.c_str());
    for (auto& s : sends) {
      MPI_Cancel(&s.request);
      MPI_Request_free(&s.request);
    }
    sends.clear();
  }
  return orphans;
}

ADCME_MPI_C_API int64_t adcme_mpi_watch_begin(const char* who, const char* waiting_for,
                                              double timeout) {
  // owned by the caller until adcme_mpi_watch_end; a pointer is its handle
  auto* section = new adcme_mpi::WatchedSection(who, waiting_for, timeout);
  return reinterpret_cast<int64_t>(section);
}

ADCME_MPI_C_API void adcme_mpi_watch_end(int64_t section) {
  delete reinterpret_cast<adcme_mpi::WatchedSection*>(section);
}
