// The cross-rank agreement check. Before a collective moves data, every rank
// allgathers (op, direction, sequence number, payload) on its communicator
// family's check communicator. Ranks that disagree on which collective comes
// next, or on its shapes, dtypes or root, get an error naming every rank's
// view, instead of a hang or wrong numbers. mpi_finalize and the end of the
// program join the same sequence (OpKind::kEndOfProgram), so "rank 0 ended
// while the others wait in a gradient" is a message, too.
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common.h"
#include "registry.h"

namespace adcme_mpi {
namespace {

constexpr int kHeader = 3;  // kind, backward, sequence number
constexpr int kPayload = 12;
constexpr int kMaxDims = 8;

std::string Doing(const std::vector<int64_t>& row) {
  static const char* types[] = {
      "",          "MPISum",     "MPIAllreduce",    "MPIBcast",
      "MPIGather", "MPIScatter", "MPIHaloExchange", "MPIHaloExchangeGrad"};
  if (row[0] == static_cast<int64_t>(OpKind::kEndOfProgram))
    return "the end of its program (mpi_finalize or exit)";
  const std::string type = row[0] > 0 && row[0] < 8 ? types[row[0]] : absl::StrCat("op ", row[0]);
  return absl::StrCat(UserFacingName(type, row[1] != 0), " (checked collective #", row[2], ")");
}

}  // namespace

absl::Status AgreeAcrossRanks(const CallSite& site, OpKind kind,
                              const std::vector<int64_t>& payload,
                              std::vector<std::vector<int64_t>>* rows) {
  rows->clear();
  if (!GetSettings().check || site.size == 1) return absl::OkStatus();
  const CommRoute route = RouteOf(site.comm);
  std::vector<int64_t> mine(kHeader + kPayload, -1);
  mine[0] = static_cast<int64_t>(kind);
  mine[1] = site.backward;
  mine[2] = NextSequenceNumber(route);
  for (size_t i = 0; i < payload.size() && i < kPayload; ++i) mine[kHeader + i] = payload[i];
  const int width = kHeader + kPayload;
  std::vector<int64_t> all(static_cast<size_t>(width) * site.size);
  MPI_Request request;
  TF_RETURN_IF_ERROR(site.Check(MPI_Iallgather(mine.data(), width, MPI_INT64_T, all.data(), width,
                                               MPI_INT64_T, route.check, &request),
                                "MPI_Iallgather"));
  TF_RETURN_IF_ERROR(WaitOne(site, request, "every rank (metadata check)"));
  std::vector<std::vector<int64_t>> headers(site.size);
  rows->assign(site.size, {});
  bool agree = true;
  for (int r = 0; r < site.size; ++r) {
    headers[r].assign(all.begin() + r * width, all.begin() + r * width + kHeader);
    (*rows)[r].assign(all.begin() + r * width + kHeader, all.begin() + (r + 1) * width);
  }
  for (int r = 0; r < site.size; ++r)
    if (headers[r] != headers[site.rank]) agree = false;
  if (agree) return absl::OkStatus();
  std::string text = "ranks disagree on which collective comes next (their programs differ):";
  for (int r = 0; r < site.size; ++r)
    absl::StrAppend(&text, r ? ";" : "", " rank ", r, " is at ", Doing(headers[r]));
  return site.InvalidArgument(text);
}

absl::Status CheckSameAcrossRanks(const CallSite& site, OpKind kind, const char* arg,
                                  const Tensor& t, int root) {
  // Payload: dtype, root, ndims, hash of all dims, the first kMaxDims dims.
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
  TF_RETURN_IF_ERROR(AgreeAcrossRanks(site, kind, mine, &rows));
  if (rows.empty()) return absl::OkStatus();
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
    for (int r = 0; r < site.size; ++r)
      msg << (r ? ", " : " ") << "rank " << r << ": " << rows[r][1];
  }
  return site.InvalidArgument(msg.str());
}

}  // namespace adcme_mpi

// The end of the program (mpi_finalize, or interpreter exit) as a checked
// collective on `forward_handle`'s family. Returns 0 when every rank ended
// too; otherwise 1 with the message in `buffer`.
extern "C" __attribute__((visibility("default"))) int adcme_mpi_end_of_program(
    int64_t forward_handle, char* buffer, int length) {
  using namespace adcme_mpi;
  CallSite site;
  site.op = "adcme_mpi end of program";
  site.comm = MPI_Comm_f2c(static_cast<MPI_Fint>(forward_handle));
  MPI_Comm_rank(site.comm, &site.rank);
  MPI_Comm_size(site.comm, &site.size);
  std::vector<std::vector<int64_t>> rows;
  const absl::Status status = AgreeAcrossRanks(site, OpKind::kEndOfProgram, {}, &rows);
  if (status.ok()) return 0;
  std::snprintf(buffer, length, "%s", std::string(status.message()).c_str());
  return 1;
}
