// The wait service: every blocking wait of the project goes through it.
//
//   - WaitAll / WaitRequest / ProbeMessage poll MPI politely (spin, then
//     yield the core when ranks outnumber cores);
//   - a wait that lasts longer than ADCME_MPI_TIMEOUT seconds is ended by
//     the watchdog, which aborts the job with one message: who waits (op and
//     rank), for how long, and for what. Calls that cannot be polled (PETSc,
//     mpi4py's blocking calls on the Python side) run inside a WatchedSection
//     and get the same watchdog and the same message;
//   - once mpi_finalize has begun (BeginClosing), a wait still in progress
//     ends with FailedPrecondition instead of waiting on;
//   - RequestSet owns the requests an op posts: on every return path they
//     are completed, or abandoned with their buffers kept alive;
//   - sends that must never block (the backward of a receive) are detached
//     here and completed later.
// Depends on core.h only.
#ifndef ADCME_MPI_OPS_WAIT_H_
#define ADCME_MPI_OPS_WAIT_H_

#include <mpi.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "core.h"

namespace adcme_mpi {

// While a WatchedSection is open, the watchdog aborts the job if it stays
// open longer than `timeout` seconds (default, < 0: ADCME_MPI_TIMEOUT; 0:
// not watched) with "adcme_mpi watchdog: <who> waited <s> s (...) for
// <waiting_for>; aborting the job". `started` backdates the section (a
// wait that opens its section only once it stops being quick).
class WatchedSection {
 public:
  WatchedSection(const std::string& who, const std::string& waiting_for, double timeout = -1,
                 double started = -1);
  ~WatchedSection();
  WatchedSection(const WatchedSection&) = delete;
  WatchedSection& operator=(const WatchedSection&) = delete;

 private:
  int64_t id_ = 0;  // 0: not watched
};

// mpi_finalize has begun: waits in progress, and those that start, end with
// FailedPrecondition naming mpi_finalize (family.cc calls it).
void BeginClosing();
bool Closing();

// Waits for all `requests`. `statuses`, if given, receives their statuses
// (also when one failed). `between_polls`, if given, runs after each
// unsuccessful poll; an error from it ends the wait. A wait that ends
// without completing leaves the requests active: a RequestSet abandons them.
absl::Status WaitAll(const CallSite& site, MPI_Request* requests, int count,
                     const std::string& waiting_for, std::vector<MPI_Status>* statuses = nullptr,
                     const std::function<absl::Status()>& between_polls = nullptr);
// One request that the caller owns (a check's persistent request).
absl::Status WaitRequest(const CallSite& site, MPI_Request* request,
                         const std::string& waiting_for);
// Blocking matched probe; returns the message handle.
absl::Status ProbeMessage(const CallSite& site, int source, int tag, MPI_Message* message,
                          MPI_Status* status, const std::string& waiting_for);

// The requests one op posts, and the buffers they use. Whatever is still
// active when the set goes away (an early return after a failed post, a
// wait ended by an error or by mpi_finalize) is abandoned: receives are
// cancelled, so they cannot take a later op's message, and every request is
// detached with the buffers kept alive until it completes, so MPI never
// writes into or reads from memory TensorFlow has freed.
class RequestSet {
 public:
  explicit RequestSet(const CallSite& site) : site_(site) {}
  ~RequestSet() { Abandon(); }
  RequestSet(const RequestSet&) = delete;
  RequestSet& operator=(const RequestSet&) = delete;

  // Keeps a buffer the posted requests use alive for as long as they may.
  void Keep(const Tensor& t) { tensors_.push_back(t); }
  void Keep(std::shared_ptr<const void> buffer) { others_.push_back(std::move(buffer)); }
  // The handle the next MPI_I* call writes; pass that call's return code to
  // Posted. `receive`: cancelled if abandoned.
  MPI_Request* Next(bool receive = false);
  absl::Status Posted(int rc, const char* mpi_function);
  // Index of the request Next returned last (for statuses).
  size_t Last() const { return requests_.size() - 1; }
  absl::Status Wait(const std::string& waiting_for, std::vector<MPI_Status>* statuses = nullptr,
                    const std::function<absl::Status()>& between_polls = nullptr);
  // Cancels the receives and detaches every active request with the buffers.
  void Abandon();

 private:
  const CallSite& site_;
  absl::InlinedVector<MPI_Request, 16> requests_;
  absl::InlinedVector<size_t, 8> receives_;
  absl::InlinedVector<Tensor, 4> tensors_;
  std::vector<std::shared_ptr<const void>> others_;
};

// Sends that must never block (the backward of a receive) are started and
// left here; they complete as later ops poll, and all at mpi_finalize.
// `what` says what was sent, for the end-of-program report if it is never received.
void DetachSend(MPI_Request request, const Tensor& keep_alive, const std::string& what);
void ProgressDetachedSends();

}  // namespace adcme_mpi

#endif  // ADCME_MPI_OPS_WAIT_H_
