// The registry of communicator families, ops in flight, and closing.
#include "family.h"

#include <atomic>
#include <chrono>
#include <map>
#include <thread>

#include "c_api.h"
#include "tensorflow/core/platform/errors.h"
#include "wait.h"

namespace adcme_mpi {
namespace {

struct Entry {
  std::shared_ptr<CommFamily> family;
  bool backward;
};

std::mutex registry_mu;  // lock order 1: never held while another lock is taken
std::map<MPI_Comm, Entry>& Registry() {
  static auto* registry = new std::map<MPI_Comm, Entry>();
  return *registry;
}
std::vector<std::shared_ptr<CommFamily>>& Ordered() {
  static auto* ordered = new std::vector<std::shared_ptr<CommFamily>>();
  return *ordered;
}

std::atomic<int64_t> in_flight{0};

}  // namespace

std::shared_ptr<CommFamily> FamilyOf(MPI_Comm comm, bool* backward) {
  std::lock_guard<std::mutex> lock(registry_mu);
  auto it = Registry().find(comm);
  if (it == Registry().end()) {
    *backward = false;
    return nullptr;
  }
  *backward = it->second.backward;
  return it->second.family;
}

std::vector<std::shared_ptr<CommFamily>> AllFamilies() {
  std::lock_guard<std::mutex> lock(registry_mu);
  return Ordered();
}

CommFamily::~CommFamily() {
  // (the last reference goes in adcme_mpi_forget_comms, on every rank, with
  // no op in flight and MPI still initialised; never at process exit: the
  // registry is never destroyed)
  int finalized = 1;
  MPI_Finalized(&finalized);
  if (finalized) return;
  if (reversed_forward != MPI_COMM_NULL) MPI_Comm_free(&reversed_forward);
  if (reversed_backward != MPI_COMM_NULL) MPI_Comm_free(&reversed_backward);
}

namespace {

absl::Status SplitReversed(const CallSite& site, MPI_Comm* out) {
  // a blocking collective (MPI has no non-blocking split): every rank is at
  // this op (the caller's check agreed), so it returns at once; if not, the
  // watchdog names it
  WatchedSection watched(site.Describe(),
                         "every rank to make the reversed communicator of the reverse scan "
                         "(MPI_Comm_split)");
  TF_RETURN_IF_ERROR(
      site.Check(MPI_Comm_split(site.comm, 0, site.size - 1 - site.rank, out), "MPI_Comm_split"));
  return site.Check(MPI_Comm_set_errhandler(*out, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
}

}  // namespace

absl::Status ReversedComm(const CallSite& site, MPI_Comm* out, bool* temporary) {
  *temporary = site.family == nullptr;
  if (*temporary) return SplitReversed(site, out);
  CommFamily& family = *site.family;
  std::lock_guard<std::mutex> lock(family.mu);
  MPI_Comm& slot =
      site.comm == family.backward ? family.reversed_backward : family.reversed_forward;
  if (slot == MPI_COMM_NULL) {
    MPI_Comm made = MPI_COMM_NULL;
    TF_RETURN_IF_ERROR(SplitReversed(site, &made));
    slot = made;
  }
  *out = slot;
  return absl::OkStatus();
}

OpInFlight::OpInFlight() {
  // (sequentially consistent with adcme_mpi_close: either it sees this op
  // counted, or this op sees it closing)
  in_flight.fetch_add(1);
  refused_ = Closing();
}

OpInFlight::~OpInFlight() { in_flight.fetch_sub(1); }

}  // namespace adcme_mpi

// ---- C entry points for the Python runtime (ctypes) ----

ADCME_MPI_C_API void adcme_mpi_register_comms(int64_t forward, int64_t backward, int64_t check) {
  using namespace adcme_mpi;
  auto family = std::make_shared<CommFamily>();
  family->forward = MPI_Comm_f2c(static_cast<MPI_Fint>(forward));
  family->backward = MPI_Comm_f2c(static_cast<MPI_Fint>(backward));
  family->check = MPI_Comm_f2c(static_cast<MPI_Fint>(check));
  std::lock_guard<std::mutex> lock(registry_mu);
  Registry()[family->forward] = Entry{family, false};
  Registry()[family->backward] = Entry{family, true};
  Registry()[family->check] = Entry{family, false};
  Ordered().push_back(family);
}

ADCME_MPI_C_API void adcme_mpi_close(const char* who) {
  using namespace adcme_mpi;
  BeginClosing();
  // the ops still in flight see it at their next poll and end; a blocking
  // call (PETSc) ends on its own or under its own watched section
  WatchedSection watched(who, "the ops still in flight on this rank to end");
  while (in_flight.load() > 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
}

ADCME_MPI_C_API void adcme_mpi_forget_comms() {
  using namespace adcme_mpi;
  std::vector<std::shared_ptr<CommFamily>> dropped;
  {
    std::lock_guard<std::mutex> lock(registry_mu);
    dropped.swap(Ordered());
    Registry().clear();
  }
  // the families' state (the checks' persistent requests) is freed here,
  // outside registry_mu, as the last references go: no op is in flight
  // (adcme_mpi_close waited for them) and the kernels hold only weak_ptrs
}
