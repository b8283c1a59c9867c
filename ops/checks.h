// The cross-rank agreement check (checks.cc): before a collective moves
// data, the ranks agree that they are at the same op with compatible
// arguments; a rank whose own input is bad tells the others, so every rank
// fails with a message naming it. Depends on family.h and wait.h.
#ifndef ADCME_MPI_OPS_CHECKS_H_
#define ADCME_MPI_OPS_CHECKS_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "core.h"

namespace adcme_mpi {

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

// Every checked collective on a communicator family gets the family's next
// sequence number. All ranks reduce a digest of (op, direction, sequence
// number, verdict, `payload`); in the common case that is all, and `rows`
// stays empty. If any rank's digest differs, all exchange their full
// payload: ranks at different collectives get an error naming what each
// rank is doing; a rank that reported bad input (see ShareLocalFailure)
// makes every rank fail with its message; otherwise `rows` receives
// everyone's payload for the caller's own message.
absl::Status AgreeAcrossRanks(const CallSite& site, OpKind kind,
                              const std::vector<int64_t>& payload,
                              std::vector<std::vector<int64_t>>* rows, Carried* carried = nullptr);
// What else CheckSameAcrossRanks compares: a further argument every rank
// must pass alike (its name, its value as a word, how a message shows it),
// and whether the first dimension may differ (an allgather's).
struct Alike {
  const char* name = "";
  int64_t value = -1;
  std::function<std::string(int64_t)> show;
  bool any_first_dim = false;
};
// The usual check for a collective's data argument: same dtype and shape
// everywhere, and the same root (root < 0: none). With `carried`, small data
// travels with the check (see Carried).
absl::Status CheckSameAcrossRanks(const CallSite& site, OpKind kind, const char* arg,
                                  const Tensor& t, int root, Carried* carried = nullptr,
                                  const Alike& alike = {});

// Deferred checks (the halo exchange; see checks.cc): the op's check is
// posted and left in flight; its verdict arrives while later ops wait, or
// before any blocking check. `explain` turns every rank's payload into the
// op's message when they differ. `sequence` receives the check's number
// (-1: no check was posted). Communicators without a family check at once.
using ExplainRows = std::function<absl::Status(const std::vector<std::vector<int64_t>>&)>;
absl::Status PostDeferredCheck(const CallSite& site, OpKind kind,
                               const std::vector<int64_t>& payload, ExplainRows explain,
                               int64_t* sequence);
// Completes the deferred checks of `site`'s family: those already complete,
// or (block) all of them. A disagreement comes back as the posting op's
// message, prefixed with `site` unless it is check number `own_sequence`.
absl::Status SettleDeferredChecks(const CallSite& site, bool block, int64_t own_sequence);

// How many check steps this thread has taken so far: checks posted, and
// earlier checks' failures reported. A kernel compares it before and after
// its run: a failure with no step in between is local bad input, to share
// with the peers (ShareLocalFailure); one after a step is already every
// rank's, and sharing it would post a check no peer posts.
int64_t CheckStepsOnThisThread();
// A checked op failed on this rank before its check (bad local input): it
// takes part in the check that its peers are in, marked failed, so every
// rank fails, the peers with a message naming this rank and quoting
// `failure`. Returns `failure` for this rank.
absl::Status ShareLocalFailure(const CallSite& site, OpKind kind, const absl::Status& failure);

}  // namespace adcme_mpi

#endif  // ADCME_MPI_OPS_CHECKS_H_
