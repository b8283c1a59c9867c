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
// mpi_finalize and the end of the program join the same sequence
// (OpKind::kEndOfProgram), so "rank 0 ended while the others wait in a
// gradient" is a message, too.
#include <cstring>
#include <mutex>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common.h"
#include "registry.h"

namespace adcme_mpi {
namespace {

constexpr int kHeader = 3;  // kind, backward, sequence number
constexpr int kPayload = 12;
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
        default: break;
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
  static const char* types[] = {
      "",          "MPISum",     "MPIAllreduce",    "MPIBcast",
      "MPIGather", "MPIScatter", "MPIHaloExchange", "MPIHaloExchangeGrad"};
  if (row[0] == static_cast<int64_t>(OpKind::kEndOfProgram))
    return "the end of its program (mpi_finalize or exit)";
  const std::string type = row[0] > 0 && row[0] < 8 ? types[row[0]] : absl::StrCat("op ", row[0]);
  return absl::StrCat(UserFacingName(type, row[1] != 0), " (checked collective #", row[2], ")");
}

// The error path: every rank's header and payload, for the message.
absl::Status GatherRows(const CallSite& site, MPI_Comm check, const std::vector<int64_t>& mine,
                        std::vector<std::vector<int64_t>>* rows) {
  const int width = kHeader + kPayload;
  std::vector<int64_t> all(static_cast<size_t>(width) * site.size);
  MPI_Request request;
  TF_RETURN_IF_ERROR(site.Check(MPI_Iallgather(mine.data(), width, MPI_INT64_T, all.data(), width,
                                               MPI_INT64_T, check, &request),
                                "MPI_Iallgather"));
  TF_RETURN_IF_ERROR(WaitOne(site, request, "every rank (metadata check)"));
  std::vector<std::vector<int64_t>> headers(site.size);
  rows->assign(site.size, {});
  bool agree = true;
  for (int r = 0; r < site.size; ++r) {
    headers[r].assign(all.begin() + r * width, all.begin() + r * width + kHeader);
    (*rows)[r].assign(all.begin() + r * width + kHeader, all.begin() + (r + 1) * width);
    if (headers[r] != std::vector<int64_t>(mine.begin(), mine.begin() + kHeader)) agree = false;
  }
  if (agree) return absl::OkStatus();
  std::string text = "ranks disagree on which collective comes next (their programs differ):";
  for (int r = 0; r < site.size; ++r)
    absl::StrAppend(&text, r ? ";" : "", " rank ", r, " is at ", Doing(headers[r]));
  return site.InvalidArgument(text);
}

}  // namespace

bool Carried::Fits(const Tensor& t) { return t.TotalBytes() <= kInlineBytes; }

absl::Status AgreeAcrossRanks(const CallSite& site, OpKind kind,
                              const std::vector<int64_t>& payload,
                              std::vector<std::vector<int64_t>>* rows, Carried* carried) {
  rows->clear();
  if (!GetSettings().check || site.size == 1) return absl::OkStatus();
  const CommRoute route = RouteOf(site.comm);
  std::vector<int64_t> mine(kHeader + kPayload, -1);
  mine[0] = static_cast<int64_t>(kind);
  mine[1] = site.backward;
  mine[2] = NextSequenceNumber(route);
  for (size_t i = 0; i < payload.size() && i < kPayload; ++i) mine[kHeader + i] = payload[i];

  Packet packet;
  std::memset(&packet, 0, sizeof(packet));
  packet.digest = Digest(mine);
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
  const PacketMpi& mpi = PacketTypes();
  MPI_Request request;
  TF_RETURN_IF_ERROR(
      site.Check(MPI_Iallreduce(MPI_IN_PLACE, &packet, 1, mpi.type, mpi.op, route.check, &request),
                 "MPI_Iallreduce"));
  TF_RETURN_IF_ERROR(WaitOne(site, request, "every rank (metadata check)"));
  if (packet.disagree) return GatherRows(site, route.check, mine, rows);
  if (inline_data) {
    if (carried->output != nullptr)
      std::memcpy(carried->output, packet.data, carried->input->TotalBytes());
    carried->done = true;
  }
  return absl::OkStatus();
}

absl::Status CheckSameAcrossRanks(const CallSite& site, OpKind kind, const char* arg,
                                  const Tensor& t, int root, Carried* carried) {
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
  TF_RETURN_IF_ERROR(AgreeAcrossRanks(site, kind, mine, &rows, carried));
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
