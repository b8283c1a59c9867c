// The cross-rank agreement check. Before a collective moves data, every rank
// contributes a fixed-size check packet to one MPI_Iallreduce on its
// communicator family's check communicator. The packet holds a digest of
// (op, direction, sequence number, dtype, shape, root); the reduction (a
// user-defined MPI op) marks the result when two different digests meet, so
// every rank learns "all agree" or "someone differs" from the same small
// message, whatever the rank count. Only then, on the error path, do the ranks
// allgather their full metadata, so the message still names every rank's view.
//
// Small collectives (at most kInlineBytes of data) travel inside the packet:
// the same reduction sums them (mpi_sum, mpi_allreduce) or hands on the root's
// value (mpi_bcast). Their check then costs no extra message at all; a larger
// collective pays one small allreduce (log2 P latencies, 64 + kInlineBytes
// bytes) before its data moves.
//
// Deferred checks (the halo exchange): an op whose data needs no verdict
// before it moves posts its check and returns once its data has arrived,
// leaving the check in flight on the family's queue. The queue is completed
// in posting order: while later ops wait, before any blocking check, when it
// is full, and at the end of the program. So the check's log2 P latencies
// overlap the exchange and the computation after it instead of preceding
// every exchange, and its steady-state cost is posting one small
// non-blocking reduction, whatever the rank count. Every rank still sees
// the same verdicts in the same order (the reductions are the same
// collectives), so divergent programs still meet in a check and get an
// error, not a hang. The price: a disagreement that does not also break the
// exchange is reported by a later op (or the end of the program), which
// names the op it came from.
//
// On a disagreement the ranks exchange their full metadata point to point
// (not with a collective: ranks may have different numbers of checks in
// flight then, and collectives must be called in the same order everywhere).
//
// mpi_finalize and the end of the program join the same sequence
// (OpKind::kEndOfProgram), so "rank 0 ended while the others wait in a
// gradient" is a message, too.
//
// Bad input on one rank: a checked op validates its input locally first;
// when that fails, the rank still takes part in the op's check with a
// verdict (its error code) in the header. The digests then differ, the
// ranks exchange their headers, and the rank with the bad input sends its
// message to the others: every rank fails, each naming that rank, instead
// of the others waiting for a rank that has left. The state of a family's
// checks lives in its CommFamily (family.h), under its mutex.
#include "checks.h"

#include <algorithm>
#include <complex>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/substitute.h"
#include "c_api.h"
#include "family.h"
#include "wait.h"

namespace adcme_mpi {
namespace {

constexpr int kHeader =
    4;  // kind, backward, sequence number, verdict (0: fine; else a status code)
constexpr int kPayload = 13;
constexpr int kMaxDims = 8;

// What the packet's reduction does with the inline data.
enum class Combine : int64_t { kNone = 0, kSum = 1, kRootValue = 2 };

struct Packet {
  uint64_t digest;    // of header and payload: equal digests, equal programs
  int64_t disagree;   // 1 once two different digests met in the reduction
  int64_t combine;    // Combine
  int64_t from_root;  // kRootValue: data holds the root's value
  int64_t dtype;      // of the inline data (in the digest too)
  int64_t count;      // elements of the inline data
  int64_t unused[2];  // pads the header to 64 bytes
  alignas(16) char data[kInlineBytes];
};

template <typename T>
void AddInto(const char* in, char* inout, int64_t count) {
  const T* a = reinterpret_cast<const T*>(in);
  T* b = reinterpret_cast<T*>(inout);
  for (int64_t i = 0; i < count; ++i) b[i] += a[i];
}

// The MPI_User_function of the check reduction. Commutative: the digest kept
// is one of two equal ones; sums and the root's value do not depend on order
// (at two ranks a + b == b + a exactly; beyond that as MPI_SUM's own order).
void CombinePackets(void* in_v, void* inout_v, int* len, MPI_Datatype*) {
  auto* in = static_cast<Packet*>(in_v);
  auto* inout = static_cast<Packet*>(inout_v);
  for (int k = 0; k < *len; ++k, ++in, ++inout) {
    if (in->disagree || in->digest != inout->digest) inout->disagree = 1;
    if (inout->disagree) continue;
    if (inout->combine == static_cast<int64_t>(Combine::kRootValue)) {
      if (in->from_root) {
        std::memcpy(inout->data, in->data, sizeof(inout->data));
        inout->from_root = 1;
      }
    } else if (inout->combine == static_cast<int64_t>(Combine::kSum)) {
      switch (inout->dtype) {
        case tensorflow::DT_FLOAT: AddInto<float>(in->data, inout->data, inout->count); break;
        case tensorflow::DT_DOUBLE: AddInto<double>(in->data, inout->data, inout->count); break;
        case tensorflow::DT_INT32: AddInto<int32_t>(in->data, inout->data, inout->count); break;
        case tensorflow::DT_INT64: AddInto<int64_t>(in->data, inout->data, inout->count); break;
        case tensorflow::DT_COMPLEX64:
          AddInto<std::complex<float>>(in->data, inout->data, inout->count);
          break;
        case tensorflow::DT_COMPLEX128:
          AddInto<std::complex<double>>(in->data, inout->data, inout->count);
          break;
        default: break;  // (float16/bfloat16 sums arrive widened to float32)
      }
    }
  }
}

struct PacketMpi {
  MPI_Datatype type;
  MPI_Op op;
};
// Created on first use (MPI is initialised by then) and kept for the process.
const PacketMpi& PacketTypes() {
  static PacketMpi mpi;
  static std::once_flag once;
  std::call_once(once, [] {
    MPI_Type_contiguous(sizeof(Packet), MPI_BYTE, &mpi.type);
    MPI_Type_commit(&mpi.type);
    MPI_Op_create(&CombinePackets, /*commute=*/1, &mpi.op);
  });
  return mpi;
}

uint64_t Digest(const std::vector<int64_t>& words) {
  uint64_t hash = 1469598103934665603ULL;  // FNV-1a over the words' bytes
  for (int64_t word : words)
    for (int b = 0; b < 8; ++b)
      hash = (hash ^ ((static_cast<uint64_t>(word) >> (8 * b)) & 0xff)) * 1099511628211ULL;
  return hash;
}

std::string Doing(const std::vector<int64_t>& row) {
  if (row[0] == static_cast<int64_t>(OpKind::kEndOfProgram))
    return "the end of its program (mpi_finalize or exit)";
  const std::string known = OpTypeOfKind(row[0]);
  const std::string type = known.empty() ? absl::StrCat("op ", row[0]) : known;
  return absl::StrCat(UserFacingName(type, row[1] != 0), " (checked collective #", row[2], ")");
}

// The error path: every rank's header and payload, for the message. Point
// to point on the check communicator (whose collectives are only checks),
// one message from each rank to each other rank.
constexpr int kRowsTag = 7, kTextTag = 8;
constexpr int kTextBytes = 2048;  // a failed rank's message, as its peers quote it

// The verdicts' second round: each rank whose verdict is a failure sends
// its message to every rank whose verdict is fine; those fail with the
// first failed rank's code and message. `verdicts[r]` is rank r's.
absl::Status ShareFailures(const CallSite& site, MPI_Comm check,
                           const std::vector<int64_t>& verdicts, const absl::Status* own_failure) {
  RequestSet requests(site);
  auto texts = std::make_shared<std::vector<char>>(static_cast<size_t>(kTextBytes) * site.size, 0);
  requests.Keep(texts);
  if (own_failure != nullptr) {
    auto text = std::make_shared<std::string>(own_failure->message().substr(0, kTextBytes - 1));
    requests.Keep(text);
    for (int r = 0; r < site.size; ++r) {
      if (verdicts[r] != 0) continue;
      TF_RETURN_IF_ERROR(requests.Posted(MPI_Isend(text->data(), static_cast<int>(text->size()),
                                                   MPI_CHAR, r, kTextTag, check, requests.Next()),
                                         "MPI_Isend"));
    }
  } else {
    for (int r = 0; r < site.size; ++r) {
      if (verdicts[r] == 0) continue;
      char* into = texts->data() + static_cast<size_t>(kTextBytes) * r;
      TF_RETURN_IF_ERROR(requests.Posted(MPI_Irecv(into, kTextBytes - 1, MPI_CHAR, r, kTextTag,
                                                   check, requests.Next(/*receive=*/true)),
                                         "MPI_Irecv"));
    }
  }
  TF_RETURN_IF_ERROR(requests.Wait("the rank(s) with bad input to send their message"));
  if (own_failure != nullptr) return *own_failure;
  for (int r = 0; r < site.size; ++r) {
    if (verdicts[r] == 0) continue;
    const char* text = texts->data() + static_cast<size_t>(kTextBytes) * r;
    return absl::Status(static_cast<absl::StatusCode>(verdicts[r]),
                        absl::StrCat(site.Describe(), ": rank ", r,
                                     " has bad input, so this op fails on every rank: ", text));
  }
  return absl::OkStatus();
}

absl::Status GatherRows(const CallSite& site, MPI_Comm check, const std::vector<int64_t>& mine,
                        std::vector<std::vector<int64_t>>* rows,
                        const absl::Status* own_failure = nullptr) {
  const int width = kHeader + kPayload;
  auto all = std::make_shared<std::vector<int64_t>>(static_cast<size_t>(width) * site.size);
  auto sent = std::make_shared<std::vector<int64_t>>(mine);
  std::copy(mine.begin(), mine.end(), all->begin() + static_cast<size_t>(width) * site.rank);
  {
    RequestSet requests(site);
    requests.Keep(all);
    requests.Keep(sent);
    for (int r = 0; r < site.size; ++r) {
      if (r == site.rank) continue;
      TF_RETURN_IF_ERROR(
          requests.Posted(MPI_Irecv(all->data() + static_cast<size_t>(width) * r, width,
                                    MPI_INT64_T, r, kRowsTag, check, requests.Next(true)),
                          "MPI_Irecv"));
      TF_RETURN_IF_ERROR(requests.Posted(
          MPI_Isend(sent->data(), width, MPI_INT64_T, r, kRowsTag, check, requests.Next()),
          "MPI_Isend"));
    }
    TF_RETURN_IF_ERROR(requests.Wait("every rank (metadata check)"));
  }
  std::vector<std::vector<int64_t>> headers(site.size);
  std::vector<int64_t> verdicts(site.size);
  rows->assign(site.size, {});
  bool agree = true, failed = false;
  for (int r = 0; r < site.size; ++r) {
    const auto row = all->begin() + static_cast<size_t>(width) * r;
    headers[r].assign(row, row + kHeader);
    (*rows)[r].assign(row + kHeader, row + width);
    verdicts[r] = headers[r][3];
    failed = failed || verdicts[r] != 0;
    // the same op at the same point: kind, direction and sequence number
    if (!std::equal(mine.begin(), mine.begin() + 3, headers[r].begin())) agree = false;
  }
  if (!agree) {
    std::string text = "ranks disagree on which collective comes next (their programs differ):";
    for (int r = 0; r < site.size; ++r)
      absl::StrAppend(&text, r ? ";" : "", " rank ", r, " is at ", Doing(headers[r]));
    return site.InvalidArgument(text);
  }
  if (failed) return ShareFailures(site, check, verdicts, own_failure);
  return absl::OkStatus();
}

}  // namespace

// Where a check's reduction runs: a packet at a fixed address and its
// request. With MPI 4 the request is persistent (MPI_Allreduce_init once per
// slot, then MPI_Start per check: about 2 us less per check than building an
// MPI_Iallreduce each time, measured on 2 ranks with MPICH 5).
struct CheckSlot {
  Packet packet;
  MPI_Request request = MPI_REQUEST_NULL;
  bool persistent = false;
};

// A deferred check in flight, with what its error path needs.
struct PendingCheck {
  CheckSlot* slot;
  std::vector<int64_t> mine;  // header and payload
  CallSite site;              // the op that posted it
  ExplainRows explain;        // its message when the ranks' payloads differ
};

// A family's checks (its CommFamily::checks, under CommFamily::mu): every
// checked op of the family takes the next slot of the ring, so a slot is
// free again once the check that used it, kSlots checks earlier, is
// complete. At most kSlots - 1 deferred checks are in flight; the oldest is
// waited for before another is posted.
constexpr size_t kSlots = 16;
struct CheckQueue {
  std::vector<std::unique_ptr<CheckSlot>> slots;
  size_t next = 0;
  std::deque<PendingCheck> pending;
  std::set<CheckSlot*> abandoned;  // a blocking check whose wait ended early (mpi_finalize)

  // Made by every rank at its first check on the family: the same point of
  // the family's collective sequence everywhere (MPI_Allreduce_init is a
  // collective, like the checks themselves).
  explicit CheckQueue(MPI_Comm check) {
    const PacketMpi& mpi = PacketTypes();
    for (size_t i = 0; i < kSlots; ++i) {
      slots.push_back(std::make_unique<CheckSlot>());
#if MPI_VERSION >= 4
      CheckSlot* slot = slots.back().get();
      slot->persistent = MPI_Allreduce_init(MPI_IN_PLACE, &slot->packet, 1, mpi.type, mpi.op, check,
                                            MPI_INFO_NULL, &slot->request) == MPI_SUCCESS;
#endif
    }
  }
  // Runs when the family is forgotten (mpi_finalize), before its
  // communicators are freed. An active request must not be freed (a check
  // still in flight after a failed program): those slots, packet and
  // request, are left to MPI_Finalize.
  ~CheckQueue() {
    std::set<CheckSlot*> in_flight = abandoned;
    for (const PendingCheck& check : pending) in_flight.insert(check.slot);
    for (auto& slot : slots) {
      if (in_flight.count(slot.get())) {
        slot.release();
      } else if (slot->persistent) {
        MPI_Request_free(&slot->request);
      }
    }
  }
};

namespace {

// The family's queue, made on its first check. Call with family->mu held.
CheckQueue* QueueOf(CommFamily* family) {
  if (!family->checks) family->checks = std::make_shared<CheckQueue>(family->check);
  return static_cast<CheckQueue*>(family->checks.get());
}

thread_local int64_t check_steps = 0;

// The verdict of a completed check that found a disagreement, as `site`
// reports it: the posting op's own message, prefixed when a later op
// (or the end of the program) is the one to find it.
absl::Status Disagreement(const CallSite& site, int64_t own_sequence, PendingCheck& check) {
  std::vector<std::vector<int64_t>> rows;
  absl::Status status = GatherRows(check.site, check.site.family->check, check.mine, &rows);
  if (status.ok() && !rows.empty()) status = check.explain(rows);
  if (status.ok()) status = check.site.InvalidArgument("ranks disagree (digest mismatch)");
  if (check.mine[2] == own_sequence && check.site.op == site.op) return status;
  return absl::Status(
      status.code(),
      absl::StrCat(site.Describe(),
                   ": the cross-rank check of an earlier op failed: ", status.message()));
}

absl::Status WaitSlot(const CallSite& site, CheckSlot* slot) {
  TF_RETURN_IF_ERROR(WaitRequest(site, &slot->request, "every rank (metadata check)"));
  if (!slot->persistent) slot->request = MPI_REQUEST_NULL;  // complete: freed by MPI
  return absl::OkStatus();
}

// Completes the queue's deferred checks in posting order, down to `keep`:
// waiting for each (block), or only those already complete. Call with the
// family's mutex held.
absl::Status SettleLocked(const CallSite& site, CheckQueue* queue, bool block, int64_t own_sequence,
                          size_t keep = 0) {
  while (queue->pending.size() > keep) {
    PendingCheck& front = queue->pending.front();
    if (block) {
      TF_RETURN_IF_ERROR(WaitSlot(site, front.slot));
    } else {
      int done = 0;
      TF_RETURN_IF_ERROR(
          site.Check(MPI_Test(&front.slot->request, &done, MPI_STATUS_IGNORE), "MPI_Test"));
      if (!done) return absl::OkStatus();
    }
    PendingCheck settled = std::move(front);
    queue->pending.pop_front();
    if (settled.slot->packet.disagree) {
      // every rank gets this verdict (at this op or another): not a local failure
      ++check_steps;
      return Disagreement(site, own_sequence, settled);
    }
  }
  return absl::OkStatus();
}

// Header (kind, direction, the family's next sequence number, verdict) and
// payload. Call with the family's mutex held.
std::vector<int64_t> HeaderAndPayload(const CallSite& site, OpKind kind,
                                      const std::vector<int64_t>& payload, int64_t verdict) {
  ++check_steps;
  std::vector<int64_t> mine(kHeader + kPayload, -1);
  mine[0] = static_cast<int64_t>(kind);
  mine[1] = site.backward;
  mine[2] = site.family ? ++site.family->sequence : 0;
  mine[3] = verdict;
  for (size_t i = 0; i < payload.size() && i < kPayload; ++i) mine[kHeader + i] = payload[i];
  return mine;
}

void ResetPacket(Packet* packet, const std::vector<int64_t>& mine) {
  std::memset(packet, 0, sizeof(*packet));
  packet->digest = Digest(mine);
}

// The next slot of the ring, its packet reset for `mine`. The caller has
// completed the check that used it (at most kSlots - 1 are pending).
CheckSlot* TakeSlot(CheckQueue* queue, const std::vector<int64_t>& mine) {
  CheckSlot* slot = queue->slots[queue->next].get();
  queue->next = (queue->next + 1) % queue->slots.size();
  ResetPacket(&slot->packet, mine);
  return slot;
}

// Starts the slot's reduction on the check communicator `check`.
absl::Status StartSlot(const CallSite& site, MPI_Comm check, CheckSlot* slot) {
  if (slot->persistent) return site.Check(MPI_Start(&slot->request), "MPI_Start");
  const PacketMpi& mpi = PacketTypes();
  return site.Check(
      MPI_Iallreduce(MPI_IN_PLACE, &slot->packet, 1, mpi.type, mpi.op, check, &slot->request),
      "MPI_Iallreduce");
}

// AgreeAcrossRanks, with this rank's verdict: `failure` (not null) marks it failed.
absl::Status Agree(const CallSite& site, OpKind kind, const std::vector<int64_t>& payload,
                   std::vector<std::vector<int64_t>>* rows, Carried* carried,
                   const absl::Status* failure) {
  rows->clear();
  if (!GetSettings().check || site.size == 1) return failure ? *failure : absl::OkStatus();
  // a family: its deferred checks first (verdicts in order), then this one
  // in the next slot; otherwise a packet of its own. Waiting for them
  // before posting this one costs at most log2 P latencies once per
  // blocking check (not per halo), and keeps the ranks' checks in step after
  // a reported disagreement: no rank has posted a check past the failed one.
  std::unique_lock<std::mutex> lock;
  CheckQueue* queue = nullptr;
  MPI_Comm check = site.comm;
  if (site.family != nullptr) {
    lock = std::unique_lock<std::mutex>(site.family->mu);
    queue = QueueOf(site.family);
    check = site.family->check;
    TF_RETURN_IF_ERROR(SettleLocked(site, queue, /*block=*/true, -1));
  }
  const int64_t verdict = failure ? static_cast<int64_t>(failure->code()) : 0;
  const std::vector<int64_t> mine = HeaderAndPayload(site, kind, payload, verdict);
  std::shared_ptr<CheckSlot> own;  // no family: a slot of this check's own
  CheckSlot* slot = nullptr;
  if (queue != nullptr) {
    slot = TakeSlot(queue, mine);
  } else {
    own = std::make_shared<CheckSlot>();
    slot = own.get();
    ResetPacket(&slot->packet, mine);
  }
  Packet& packet = slot->packet;
  const bool inline_data = carried != nullptr && Carried::Fits(*carried->input);
  if (inline_data) {
    const Tensor& in = *carried->input;
    packet.combine = static_cast<int64_t>(carried->sum ? Combine::kSum : Combine::kRootValue);
    packet.dtype = in.dtype();
    packet.count = in.NumElements();
    if (carried->sum || carried->is_root) {
      std::memcpy(packet.data, DataOf(in), in.TotalBytes());
      packet.from_root = carried->is_root;
    }
  }
  if (own) {  // its request must not outlive the packet: a request set keeps it
    RequestSet requests(site);
    requests.Keep(own);
    const PacketMpi& mpi = PacketTypes();
    TF_RETURN_IF_ERROR(requests.Posted(
        MPI_Iallreduce(MPI_IN_PLACE, &packet, 1, mpi.type, mpi.op, check, requests.Next()),
        "MPI_Iallreduce"));
    TF_RETURN_IF_ERROR(requests.Wait("every rank (metadata check)"));
  } else {
    TF_RETURN_IF_ERROR(StartSlot(site, check, slot));
    const absl::Status waited = WaitSlot(site, slot);
    if (!waited.ok()) {
      queue->abandoned.insert(slot);  // still active: never started again nor freed
      return waited;
    }
  }
  if (packet.disagree) return GatherRows(site, check, mine, rows, failure);
  if (failure != nullptr) return *failure;  // every rank failed alike
  if (inline_data) {
    if (carried->output != nullptr)
      std::memcpy(carried->output, packet.data, carried->input->TotalBytes());
    carried->done = true;
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status PostDeferredCheck(const CallSite& site, OpKind kind,
                               const std::vector<int64_t>& payload, ExplainRows explain,
                               int64_t* sequence) {
  *sequence = -1;
  if (!GetSettings().check || site.size == 1) return absl::OkStatus();
  if (site.family == nullptr) {  // no family: check now
    std::vector<std::vector<int64_t>> rows;
    TF_RETURN_IF_ERROR(AgreeAcrossRanks(site, kind, payload, &rows));
    return rows.empty() ? absl::OkStatus() : explain(rows);
  }
  std::lock_guard<std::mutex> lock(site.family->mu);
  CheckQueue* queue = QueueOf(site.family);
  TF_RETURN_IF_ERROR(SettleLocked(site, queue, /*block=*/false, -1));
  TF_RETURN_IF_ERROR(SettleLocked(site, queue, /*block=*/true, -1, queue->slots.size() - 1));
  PendingCheck check;
  check.mine = HeaderAndPayload(site, kind, payload, 0);
  check.slot = TakeSlot(queue, check.mine);
  check.site = site;
  check.explain = std::move(explain);
  TF_RETURN_IF_ERROR(StartSlot(site, site.family->check, check.slot));
  *sequence = check.mine[2];
  queue->pending.push_back(std::move(check));
  return absl::OkStatus();
}

absl::Status SettleDeferredChecks(const CallSite& site, bool block, int64_t own_sequence) {
  if (site.family == nullptr) return absl::OkStatus();
  std::lock_guard<std::mutex> lock(site.family->mu);
  if (!site.family->checks) return absl::OkStatus();
  return SettleLocked(site, QueueOf(site.family), block, own_sequence);
}

bool Carried::Fits(const Tensor& t) { return t.TotalBytes() <= kInlineBytes; }

absl::Status AgreeAcrossRanks(const CallSite& site, OpKind kind,
                              const std::vector<int64_t>& payload,
                              std::vector<std::vector<int64_t>>* rows, Carried* carried) {
  return Agree(site, kind, payload, rows, carried, nullptr);
}

absl::Status CheckSameAcrossRanks(const CallSite& site, OpKind kind, const char* arg,
                                  const Tensor& t, int root, Carried* carried, const Alike& alike) {
  // Payload: dtype, root, ndims, hash of the dims that must agree, the
  // further argument, the first kMaxDims dims.
  std::vector<int64_t> mine(5 + kMaxDims, -1);
  mine[0] = t.dtype();
  mine[1] = root;
  mine[2] = t.dims();
  uint64_t hash = 1469598103934665603ULL;
  for (int d = 0; d < t.dims(); ++d) {
    if (d > 0 || !alike.any_first_dim)
      hash = (hash ^ static_cast<uint64_t>(t.dim_size(d))) * 1099511628211ULL;
    if (d < kMaxDims) mine[5 + d] = t.dim_size(d);
  }
  mine[3] = static_cast<int64_t>(hash >> 1);
  mine[4] = alike.value;
  std::vector<std::vector<int64_t>> rows;
  TF_RETURN_IF_ERROR(AgreeAcrossRanks(site, kind, mine, &rows, carried));
  if (rows.empty()) return absl::OkStatus();
  bool same_tensor = true, same_root = true, same_value = true;
  for (const auto& row : rows) {
    if (row[0] != mine[0] || row[2] != mine[2] || row[3] != mine[3]) same_tensor = false;
    if (row[1] != mine[1]) same_root = false;
    if (row[4] != mine[4]) same_value = false;
  }
  std::ostringstream msg;
  if (!same_tensor) {
    msg << "argument '" << arg << "' must have the same dtype and "
        << (alike.any_first_dim ? "the same dimensions after the first" : "shape")
        << " on every rank; got";
    for (int r = 0; r < site.size; ++r) {
      TensorShape shape;
      for (int d = 0; d < rows[r][2] && d < kMaxDims; ++d) shape.AddDim(rows[r][5 + d]);
      msg << (r ? ", " : " ") << "rank " << r << ": "
          << ShapeString(static_cast<DataType>(rows[r][0]), shape);
    }
  } else if (!same_root || !same_value) {
    const int column = same_root ? 4 : 1;
    std::string got;
    for (int r = 0; r < site.size; ++r)
      absl::StrAppend(
          &got, r ? ", " : " ", "rank ", r, ": ",
          column == 1 || !alike.show ? absl::StrCat(rows[r][column]) : alike.show(rows[r][column]));
    msg << absl::Substitute(messages::kSameEverywhere, column == 1 ? "root" : alike.name, got);
  } else {
    return absl::OkStatus();
  }
  return site.InvalidArgument(msg.str());
}

int64_t CheckStepsOnThisThread() { return check_steps; }

absl::Status ShareLocalFailure(const CallSite& site, OpKind kind, const absl::Status& failure) {
  std::vector<std::vector<int64_t>> rows;
  const absl::Status shared = Agree(site, kind, {}, &rows, nullptr, &failure);
  // this rank's own message, unless the check found something else first
  // (the ranks at different ops, or an earlier op's disagreement)
  return shared.message() == failure.message() || shared.ok() ? failure : shared;
}

}  // namespace adcme_mpi

// The end of the program (mpi_finalize, or interpreter exit) as a checked
// collective on `forward_handle`'s family. Returns 0 when every rank ended
// too; otherwise 1 with the message in `buffer`.
ADCME_MPI_C_API int adcme_mpi_end_of_program(int64_t forward_handle, char* buffer, int length) {
  using namespace adcme_mpi;
  const MPI_Comm comm = MPI_Comm_f2c(static_cast<MPI_Fint>(forward_handle));
  CallSite site = SiteOn("adcme_mpi end of program", comm);
  bool backward = false;
  const std::shared_ptr<CommFamily> own = FamilyOf(comm, &backward);
  site.family = own.get();
  // every family's deferred checks first (registration order, the same on
  // every rank), so none is left in flight when the communicators are freed
  absl::Status status;
  for (const std::shared_ptr<CommFamily>& family : AllFamilies()) {
    std::lock_guard<std::mutex> lock(family->mu);
    if (family->checks) status.Update(SettleLocked(site, QueueOf(family.get()), true, -1));
  }
  std::vector<std::vector<int64_t>> rows;
  if (status.ok()) status = AgreeAcrossRanks(site, OpKind::kEndOfProgram, {}, &rows);
  if (status.ok()) return 0;
  std::snprintf(buffer, length, "%s", std::string(status.message()).c_str());
  return 1;
}
