// Waiting for MPI requests and messages, with the watchdog; sends that must
// never block (detached).
#include <sched.h>

#include <chrono>
#include <cstdio>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "c_api.h"
#include "common.h"

namespace adcme_mpi {
namespace {

[[noreturn]] void WatchdogAbort(const CallSite& site, const std::string& waiting_for,
                                double waited) {
  std::fprintf(stderr,
               "adcme_mpi watchdog: %s waited %.1f s (ADCME_MPI_TIMEOUT=%g) for %s; "
               "aborting the job\n",
               site.Describe().c_str(), waited, GetSettings().timeout, waiting_for.c_str());
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
  Poller(const CallSite& site, const std::string& waiting_for)
      : site_(site), waiting_for_(waiting_for), start_(Clock::now()) {}
  void Pause() {
    if (++polls_ < 2000) return;
    const Settings& settings = GetSettings();
    if (polls_ % 64 == 0 && settings.timeout > 0) {
      const double waited = std::chrono::duration<double>(Clock::now() - start_).count();
      if (waited > settings.timeout) WatchdogAbort(site_, waiting_for_, waited);
    }
    if (!settings.oversubscribed) return;  // a core each: keep polling, lowest latency
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

struct DetachedSend {
  MPI_Request request;
  std::vector<Tensor> keep_alive;  // hold the buffers until the request completes
  std::string what;                // for the message if it is never received
};
std::mutex detached_mu;
std::vector<DetachedSend>& Detached() {
  static auto* sends = new std::vector<DetachedSend>();
  return *sends;
}

}  // namespace

absl::Status WaitAll(const CallSite& site, std::vector<MPI_Request>* requests,
                     const std::string& waiting_for, std::vector<MPI_Status>* statuses_out,
                     const std::function<absl::Status()>& between_polls) {
  if (requests->empty()) return absl::OkStatus();
  std::vector<MPI_Status> statuses(requests->size());
  Poller poller(site, waiting_for);
  for (;;) {
    int done = 0;
    // one request: MPI_Test (MPICH 5.0.2's MPI_Testall reports MPI_ERR_IN_STATUS,
    // with no error in the status, for a completed persistent collective)
    const int rc = requests->size() == 1 ? MPI_Test(requests->data(), &done, statuses.data())
                                         : MPI_Testall(static_cast<int>(requests->size()),
                                                       requests->data(), &done, statuses.data());
    if (statuses_out != nullptr && (done || rc == MPI_ERR_IN_STATUS)) *statuses_out = statuses;
    if (rc == MPI_ERR_IN_STATUS) {
      for (const MPI_Status& st : statuses)
        if (st.MPI_ERROR != MPI_SUCCESS && st.MPI_ERROR != MPI_ERR_PENDING)
          return site.Check(st.MPI_ERROR, "MPI_Testall");
    }
    TF_RETURN_IF_ERROR(site.Check(rc, requests->size() == 1 ? "MPI_Test" : "MPI_Testall"));
    if (done) return absl::OkStatus();
    if (between_polls) TF_RETURN_IF_ERROR(between_polls());
    poller.Pause();
  }
}

absl::Status WaitOne(const CallSite& site, MPI_Request request, const std::string& waiting_for) {
  std::vector<MPI_Request> requests{request};
  return WaitAll(site, &requests, waiting_for);
}

absl::Status ProbeMessage(const CallSite& site, int source, int tag, MPI_Message* message,
                          MPI_Status* status, const std::string& waiting_for) {
  Poller poller(site, waiting_for);
  for (;;) {
    int found = 0;
    TF_RETURN_IF_ERROR(
        site.Check(MPI_Improbe(source, tag, site.comm, &found, message, status), "MPI_Improbe"));
    if (found) return absl::OkStatus();
    poller.Pause();
  }
}

void DetachSend(MPI_Request request, const std::vector<Tensor>& keep_alive,
                const std::string& what) {
  std::lock_guard<std::mutex> lock(detached_mu);
  Detached().push_back({request, keep_alive, what});
}

void AbandonRequests(std::vector<MPI_Request>* requests, const std::vector<size_t>& receives,
                     const std::vector<Tensor>& buffers) {
  for (size_t i : receives)
    if (i < requests->size() && (*requests)[i] != MPI_REQUEST_NULL) MPI_Cancel(&(*requests)[i]);
  for (MPI_Request& request : *requests)
    if (request != MPI_REQUEST_NULL) DetachSend(request, buffers, "a message of an op that failed");
  requests->clear();
}

namespace {
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
