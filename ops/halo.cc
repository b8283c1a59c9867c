// Halo exchange: MPIHaloExchange and its adjoint MPIHaloExchangeGrad
// (adcme_mpi/wrappers/halo.py). Each is the other's adjoint: the gradient of the
// exchange sends ghost-cell gradients home; the gradient of that is the
// exchange again (with the fill's gradient as fill value).
//
// Ranks form an m x n grid, row-major: rank r is block (r / n, r % n). The
// padded output has `width` ghost rows/columns on each side. For each of the
// 8 directions with a neighbour, a rank posts a non-blocking receive of the
// ghost region and a non-blocking send of its matching edge region (both
// packed contiguously, see PackRegion), then waits: no grid shape can deadlock. The
// backward op runs on the gradient communicator, so its messages never match
// the forward pass's whatever the tags.
#include <algorithm>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/substitute.h"
#include "common.h"
#include "tensorflow/core/framework/op.h"

namespace adcme_mpi {
namespace {

using tensorflow::shape_inference::DimensionHandle;
using tensorflow::shape_inference::ShapeHandle;

// ---- interfaces and shape functions ----

// A block and its padded form differ by 2 * width in each dimension: the
// exchange adds the ghost bands (sign +1), its adjoint removes them (-1).
absl::Status PaddedShape(InferenceContext* c, int sign) {
  ShapeHandle in;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &in));
  int64_t width = 1;
  TF_RETURN_IF_ERROR(c->GetAttr("width", &width));
  DimensionHandle dims[2];
  for (int d = 0; d < 2; ++d)
    TF_RETURN_IF_ERROR(sign > 0 ? c->Add(c->Dim(in, d), 2 * width, &dims[d])
                                : c->Subtract(c->Dim(in, d), 2 * width, &dims[d]));
  c->set_output(0, c->Matrix(dims[0], dims[1]));
  return absl::OkStatus();
}

absl::Status HaloShape(InferenceContext* c) {  // (u, fill_value, tag) -> padded
  TF_RETURN_IF_ERROR(ScalarInputs(c, 1, 2));
  return PaddedShape(c, +1);
}

absl::Status HaloGradShape(InferenceContext* c) {  // (grad_padded, tag) -> grad_u, grad_fill
  TF_RETURN_IF_ERROR(ScalarInputs(c, 1, 1));
  c->set_output(1, c->Scalar());
  return PaddedShape(c, -1);
}

REGISTER_OP("MPIHaloExchange")
    .Input("u: T")
    .Input("fill_value: T")
    .Input("tag: int32")
    .Input("token: float")
    .Output("padded: T")
    .Output("token_out: float")
    .Attr(ADCME_MPI_HALO_TYPES)
    .Attr("m: int >= 1")
    .Attr("n: int >= 1")
    .Attr("width: int >= 1")
    .Attr("comm: int")
    .Attr("grad_comm: int")
    .SetIsStateful()
    .SetShapeFn(WithToken<HaloShape>)
    .Doc("`u` padded by `width` ghost cells from the neighbours on an m x n rank grid.");

// The adjoint. It is linear in (grad_padded) and its own adjoint is
// MPIHaloExchange(grad_grad_u, fill_value=grad_grad_fill_value).
REGISTER_OP("MPIHaloExchangeGrad")
    .Input("grad_padded: T")
    .Input("tag: int32")
    .Input("token: float")
    .Output("grad_u: T")
    .Output("grad_fill_value: T")
    .Output("token_out: float")
    .Attr("T: {float, double}")
    .Attr("m: int >= 1")
    .Attr("n: int >= 1")
    .Attr("width: int >= 1")
    .Attr("comm: int")
    .Attr("grad_comm: int")
    .SetIsStateful()
    .SetShapeFn(WithToken<HaloGradShape>)
    .Doc("Adjoint of MPIHaloExchange: ghost-cell gradients return to their owners.");

// ---- kernels ----

struct Range {
  int begin, length;
};

// Along one axis of length `len`, direction d in {-1, 0, 1}:
// the ghost band in padded coordinates.
Range GhostRange(int d, int len, int w) {
  if (d < 0) return {0, w};
  if (d > 0) return {w + len, w};
  return {w, len};
}
// The edge band of the block that direction d's neighbour needs, in the
// block's own (unpadded) coordinates.
Range EdgeRange(int d, int len, int w) {
  if (d < 0) return {0, w};
  if (d > 0) return {len - w, w};
  return {0, len};
}

struct Region {
  Range rows, cols;
  int64_t size() const { return static_cast<int64_t>(rows.length) * cols.length; }
};

// `rows` rows of `row_bytes` bytes from `src` (rows `src_stride` bytes
// apart; 0 repeats one row) to `dst` (rows `dst_stride` apart). Rows of one
// 4-, 8- or 16-byte value (a width-1 halo's left and right bands, and the
// fill, element by element) get a memcpy of constant size, which the
// compiler makes a load and a store instead of a library call per element.
template <size_t N>
void CopyRowsOf(char* dst, size_t dst_stride, const char* src, size_t src_stride, int64_t rows) {
  for (int64_t i = 0; i < rows; ++i) std::memcpy(dst + i * dst_stride, src + i * src_stride, N);
}
void CopyRows(char* dst, size_t dst_stride, const char* src, size_t src_stride, int64_t rows,
              size_t row_bytes) {
  switch (row_bytes) {
    case 4: return CopyRowsOf<4>(dst, dst_stride, src, src_stride, rows);
    case 8: return CopyRowsOf<8>(dst, dst_stride, src, src_stride, rows);
    case 16: return CopyRowsOf<16>(dst, dst_stride, src, src_stride, rows);
    default:
      for (int64_t i = 0; i < rows; ++i)
        std::memcpy(dst + i * dst_stride, src + i * src_stride, row_bytes);
  }
}

// A region of a row-major matrix with `ld` columns of `elem`-byte values,
// to or from a contiguous buffer. The exchange packs its edges itself
// instead of handing MPI subarray types: measured with MPICH 5.0.2 on shared
// memory, 2 ranks, a 1,024-row column took 353 us as a subarray type and
// 6.9 us packed (362 rows: 2.8 and 3.2 us).
void PackRegion(const char* matrix, int ld, const Region& region, size_t elem, char* out) {
  const size_t row_bytes = region.cols.length * elem;
  CopyRows(out, row_bytes, matrix + (region.rows.begin * size_t(ld) + region.cols.begin) * elem,
           ld * elem, region.rows.length, row_bytes);
}
void UnpackRegion(const char* in, const Region& region, int ld, size_t elem, char* matrix) {
  const size_t row_bytes = region.cols.length * elem;
  CopyRows(matrix + (region.rows.begin * size_t(ld) + region.cols.begin) * elem, ld * elem, in,
           row_bytes, region.rows.length, row_bytes);
}

// `count` copies of the `elem`-byte value at `value`, from `dst` on.
void FillElements(char* dst, const char* value, int64_t count, size_t elem) {
  CopyRows(dst, elem, value, 0, count, elem);
}

struct Neighbour {
  int di, dj, rank;
};

class HaloKernelBase : public MpiKernel {
 public:
  explicit HaloKernelBase(OpKernelConstruction* c) : MpiKernel(c) {
    OP_REQUIRES_OK(c, c->GetAttr("m", &m_));
    OP_REQUIRES_OK(c, c->GetAttr("n", &n_));
    OP_REQUIRES_OK(c, c->GetAttr("width", &width_));
  }

 protected:
  // A ghost band being received: from whom, and how many values it must hold.
  struct Band {
    Neighbour from;
    int64_t values;
    size_t request;  // index in the exchange's requests
  };
  // Checks the grid against the communicator and, unless ADCME_MPI_CHECK=0,
  // posts the check that every rank agrees on m, n, width and dtype. It is
  // deferred (checks.cc): the exchange does not wait for it, only watches it
  // (WaitWatching). Edge lengths differ legitimately between blocks:
  // neighbours' agreement on them is checked by CheckBands from the halo
  // messages themselves, at no cost. `sequence` receives the check's number.
  absl::Status CheckGrid(const CallSite& site, OpKind kind, DataType dtype, int rows, int cols,
                         int64_t* sequence) const {
    if (m_ * n_ != site.size)
      return site.InvalidArgument(
          absl::Substitute(messages::kGridSize, m_, n_, m_ * n_, site.size));
    if (rows < width_ || cols < width_)
      return site.InvalidArgument(absl::Substitute(
          messages::kHaloWidth, "u", absl::StrCat("(", rows, ", ", cols, ")"), width_));
    // Every rank's grid, only when some rank's differ: names who and how.
    const int64_t m = m_, n = n_, width = width_;
    auto explain = [site, m, n, width, dtype](const std::vector<std::vector<int64_t>>& all) {
      for (int r = 0; r < static_cast<int>(all.size()); ++r) {
        const auto& row = all[r];
        if (row[0] != m || row[1] != n || row[2] != width || row[3] != dtype)
          return site.InvalidArgument(absl::StrCat(
              "rank ", r, " called with m=", row[0], ", n=", row[1], ", width=", row[2], ", dtype ",
              tensorflow::DataTypeString(static_cast<DataType>(row[3])), " but rank ", site.rank,
              " with m=", m, ", n=", n, ", width=", width, ", dtype ",
              tensorflow::DataTypeString(dtype)));
      }
      return absl::OkStatus();
    };
    return PostDeferredCheck(site, kind, {m_, n_, width_, dtype}, explain, sequence);
  }

  // Waits for the exchange while completing the checks in flight. If a check
  // fails first, the exchange's requests are abandoned (the request set
  // keeps its buffers alive for them) and its error returned. Then, if a
  // band is wrong, the checks are completed first: a disagreement on m, n,
  // width or dtype is the cause to name, not the bands it garbled.
  absl::Status WaitWatching(const CallSite& site, RequestSet* requests,
                            const std::vector<Band>& bands, const std::vector<Neighbour>& nbs,
                            MPI_Datatype type, int rows, int cols, int64_t sequence) const {
    std::vector<MPI_Status> statuses;
    const absl::Status waited = requests->Wait(Peers(nbs), &statuses, [&] {
      return SettleDeferredChecks(site, /*block=*/false, sequence);
    });
    if (!waited.ok() && statuses.empty()) return waited;  // not complete: abandoned
    const absl::Status bands_ok = CheckBands(site, bands, statuses, type, rows, cols);
    if (!bands_ok.ok()) {
      TF_RETURN_IF_ERROR(SettleDeferredChecks(site, /*block=*/true, sequence));
      return bands_ok;
    }
    TF_RETURN_IF_ERROR(waited);
    return SettleDeferredChecks(site, /*block=*/false, sequence);
  }

  // What arrived from one neighbour: where it goes, and the values.
  struct Arrived {
    Region region;
    const char* data;
  };
  // The exchange of packed bands, for both directions: for every neighbour,
  // one band of `from` (a row-major matrix with `ld` columns) is packed into
  // one contiguous buffer and sent, and one band is received into another.
  // Forward, the block's edge goes out (`from` is the block) and the padded
  // output's ghost band comes in; the adjoint sends the ghost band's
  // gradient (`from` is the padded gradient) and receives the edge's. The
  // messages touch only the two buffers, which stay alive if the exchange is
  // abandoned. On success, `arrived` lists every neighbour's data and its region (in the
  // padded output forward, in the block backward); `buffers` owns the data.
  absl::Status ExchangeBands(OpKernelContext* ctx, const CallSite& site, bool forward,
                             const Tensor& from, int ld, int tag, MPI_Datatype type, int rows,
                             int cols, int64_t sequence, const std::vector<Neighbour>& nbs,
                             std::vector<Arrived>* arrived, Tensor* buffers) const {
    const size_t elem = tensorflow::DataTypeSize(from.dtype());
    auto sent = [&](const Neighbour& nb) {
      return forward ? Edge(nb, rows, cols) : Ghost(nb, rows, cols);
    };
    auto received = [&](const Neighbour& nb) {
      return forward ? Ghost(nb, rows, cols) : Edge(nb, rows, cols);
    };
    int64_t out_total = 0, in_total = 0;
    for (const Neighbour& nb : nbs) {
      if (nb.rank == MPI_PROC_NULL) continue;
      out_total += sent(nb).size();
      in_total += received(nb).size();
    }
    Tensor outgoing;
    TF_RETURN_IF_ERROR(ctx->allocate_temp(
        from.dtype(), TensorShape({std::max<int64_t>(out_total, 1)}), &outgoing));
    TF_RETURN_IF_ERROR(
        ctx->allocate_temp(from.dtype(), TensorShape({std::max<int64_t>(in_total, 1)}), buffers));
    char* send = DataOf(outgoing);
    char* receive = DataOf(*buffers);
    // the messages touch only these two buffers: kept alive if abandoned
    RequestSet requests(site);
    requests.Keep(outgoing);
    requests.Keep(*buffers);
    std::vector<Band> bands;
    arrived->clear();
    for (const Neighbour& nb : nbs) {
      if (nb.rank == MPI_PROC_NULL) continue;  // a physical boundary: nothing to exchange
      const Region out = sent(nb), in = received(nb);
      PackRegion(DataOf(from), ld, out, elem, send);
      arrived->push_back({in, receive});
      TF_RETURN_IF_ERROR(requests.Posted(MPI_Irecv(receive, static_cast<int>(in.size()), type,
                                                   nb.rank, tag, site.comm, requests.Next(true)),
                                         "MPI_Irecv"));
      bands.push_back({nb, in.size(), requests.Last()});
      TF_RETURN_IF_ERROR(requests.Posted(MPI_Isend(send, static_cast<int>(out.size()), type,
                                                   nb.rank, tag, site.comm, requests.Next()),
                                         "MPI_Isend"));
      send += out.size() * elem;
      receive += in.size() * elem;
    }
    return WaitWatching(site, &requests, bands, nbs, type, rows, cols, sequence);
  }

  // Blocks that share an edge must agree on its length. A neighbour whose
  // edge is longer makes the receive fail (MPI_ERR_TRUNCATE), a shorter one
  // fills less of the band: either names both ranks and the mismatch.
  absl::Status CheckBands(const CallSite& site, const std::vector<Band>& bands,
                          const std::vector<MPI_Status>& statuses, MPI_Datatype type, int rows,
                          int cols) const {
    for (const Band& band : bands) {
      if (band.request >= statuses.size()) continue;
      const MPI_Status& status = statuses[band.request];
      int error_class = MPI_SUCCESS;
      if (status.MPI_ERROR != MPI_SUCCESS && status.MPI_ERROR != MPI_ERR_PENDING)
        MPI_Error_class(status.MPI_ERROR, &error_class);
      int received = static_cast<int>(band.values);
      if (error_class == MPI_SUCCESS && status.MPI_ERROR != MPI_ERR_PENDING)
        MPI_Get_elements(&status, type, &received);
      if (error_class != MPI_ERR_TRUNCATE && received == band.values) continue;
      const bool side = band.from.di == 0;  // left/right neighbour: they share rows
      const int mine = side ? rows : cols;
      const std::string theirs = error_class == MPI_ERR_TRUNCATE ? absl::StrCat("more than ", mine)
                                                                 : absl::StrCat(received / width_);
      return site.InvalidArgument(
          absl::StrCat("blocks of ", side ? "left/right" : "up/down",
                       " neighbours must have the same number of ", side ? "rows" : "columns",
                       ": rank ", site.rank, " has [", rows, ",", cols, "] but rank ",
                       band.from.rank, " sent an edge of ", theirs, side ? " rows" : " columns"));
    }
    return absl::OkStatus();
  }

  std::vector<Neighbour> Neighbours(int rank) const {
    std::vector<Neighbour> out;
    const int bi = rank / n_, bj = rank % n_;
    for (int di = -1; di <= 1; ++di)
      for (int dj = -1; dj <= 1; ++dj) {
        if (di == 0 && dj == 0) continue;
        const int i = bi + di, j = bj + dj;
        const bool inside = i >= 0 && i < m_ && j >= 0 && j < n_;
        out.push_back({di, dj, inside ? static_cast<int>(i * n_ + j) : MPI_PROC_NULL});
      }
    return out;
  }

  Region Ghost(const Neighbour& nb, int rows, int cols) const {
    return {GhostRange(nb.di, rows, width_), GhostRange(nb.dj, cols, width_)};
  }
  Region Edge(const Neighbour& nb, int rows, int cols) const {
    return {EdgeRange(nb.di, rows, width_), EdgeRange(nb.dj, cols, width_)};
  }
  std::string Peers(const std::vector<Neighbour>& nbs) const {
    std::string s = "halo neighbours";
    for (const Neighbour& nb : nbs)
      if (nb.rank != MPI_PROC_NULL) absl::StrAppend(&s, " ", nb.rank);
    return s;
  }

  int64_t m_ = 1, n_ = 1, width_ = 1;
};

class HaloExchangeKernel : public HaloKernelBase {
 public:
  using HaloKernelBase::HaloKernelBase;

  // The padded output in one pass, row by row, each byte written once: the
  // block's rows, and the ghost bands of physical boundaries (no neighbour)
  // filled with `value`. Bands with a neighbour are left to MPI's receives.
  // (Filling the boundary bands region by region, one element at a time,
  // after copying the block cost a second pass over the output's edges.)
  void WritePadded(const Tensor& u, const char* value, const std::vector<Neighbour>& nbs, int rows,
                   int cols, Tensor* out) const {
    const int w = width_, Q = cols + 2 * w;
    const size_t elem = tensorflow::DataTypeSize(u.dtype());
    const char* src = DataOf(u);
    char* dst = DataOf(*out);
    // nbs lists the 8 directions row-major, di then dj in {-1, 0, 1}, without (0, 0)
    auto boundary = [&](int di, int dj) {
      const int k = (di + 1) * 3 + (dj + 1);
      return nbs[k > 4 ? k - 1 : k].rank == MPI_PROC_NULL;
    };
    for (int r = 0; r < rows + 2 * w; ++r) {
      const int di = r < w ? -1 : r >= rows + w ? 1 : 0;
      char* row = dst + r * size_t(Q) * elem;
      for (int dj = -1; dj <= 1; ++dj) {
        const Range span = GhostRange(dj, cols, w);
        if (di == 0 && dj == 0) {
          std::memcpy(row + w * elem, src + (r - w) * size_t(cols) * elem, cols * elem);
        } else if (boundary(di, dj)) {
          FillElements(row + span.begin * elem, value, span.length, elem);
        }
      }
    }
  }

  absl::Status Run(OpKernelContext* ctx, const CallSite& site) override {
    const Tensor& u = ctx->input(0);
    const Tensor& fill = ctx->input(1);
    int tag = 0;
    TF_RETURN_IF_ERROR(ScalarIntArg(ctx, 2, "tag", 0, TagUpperBound(site.comm), site, &tag));
    if (u.dims() != 2)
      return site.InvalidArgument(
          absl::StrCat("argument 'u' must be 2-D, got shape ", u.shape().DebugString()));
    if (fill.dims() != 0) return site.InvalidArgument("argument 'fill_value' must be a scalar");
    MPI_Datatype type;
    TF_RETURN_IF_ERROR(DatatypeArg(site, "u", u, &type));
    const int rows = u.dim_size(0), cols = u.dim_size(1), w = width_;
    int unused = 0;
    TF_RETURN_IF_ERROR(CountOf(site, "u", (rows + 2 * w) * int64_t{cols + 2 * w}, &unused));
    int64_t sequence = -1;
    TF_RETURN_IF_ERROR(CheckGrid(site, OpKind::kMPIHaloExchange, u.dtype(), rows, cols, &sequence));

    Tensor* out = nullptr;
    TF_RETURN_IF_ERROR(OutputBuffer(ctx, 0, TensorShape({rows + 2 * w, cols + 2 * w}), &out));
    const int Q = cols + 2 * w;
    const std::vector<Neighbour> nbs = Neighbours(site.rank);
    WritePadded(u, DataOf(fill), nbs, rows, cols, out);

    std::vector<Arrived> arrived;
    Tensor buffers;
    TF_RETURN_IF_ERROR(ExchangeBands(ctx, site, /*forward=*/true, u, cols, tag, type, rows, cols,
                                     sequence, nbs, &arrived, &buffers));
    const size_t elem = tensorflow::DataTypeSize(u.dtype());
    for (const Arrived& band : arrived) UnpackRegion(band.data, band.region, Q, elem, DataOf(*out));
    return absl::OkStatus();
  }
};

template <typename T>
void AddRegion(const T* from, const Region& region, T* grad, int cols) {
  size_t k = 0;
  for (int i = 0; i < region.rows.length; ++i)
    for (int j = 0; j < region.cols.length; ++j)
      grad[(region.rows.begin + i) * size_t(cols) + region.cols.begin + j] += from[k++];
}

class HaloExchangeGradKernel : public HaloKernelBase {
 public:
  using HaloKernelBase::HaloKernelBase;
  absl::Status Run(OpKernelContext* ctx, const CallSite& site) override {
    switch (ctx->input(0).dtype()) {
      case tensorflow::DT_FLOAT: return RunTyped<float>(ctx, site);
      case tensorflow::DT_DOUBLE: return RunTyped<double>(ctx, site);
      default: return site.InvalidArgument("gradients exist for float32 and float64 only");
    }
  }

  template <typename T>
  absl::Status RunTyped(OpKernelContext* ctx, const CallSite& site) {
    const Tensor& dy = ctx->input(0);
    int tag = 0;
    TF_RETURN_IF_ERROR(ScalarIntArg(ctx, 1, "tag", 0, TagUpperBound(site.comm), site, &tag));
    const int w = width_;
    if (dy.dims() != 2 || dy.dim_size(0) < 3 * w || dy.dim_size(1) < 3 * w)
      return site.InvalidArgument(absl::StrCat("argument 'grad_padded' must be 2-D and at least ",
                                               3 * w, " in each dimension, got shape ",
                                               dy.shape().DebugString()));
    const int P = dy.dim_size(0), Q = dy.dim_size(1), rows = P - 2 * w, cols = Q - 2 * w;
    int64_t sequence = -1;
    TF_RETURN_IF_ERROR(
        CheckGrid(site, OpKind::kMPIHaloExchangeGrad, dy.dtype(), rows, cols, &sequence));
    MPI_Datatype type;
    TF_RETURN_IF_ERROR(DatatypeArg(site, "grad_padded", dy, &type));

    Tensor* grad_u = nullptr;
    Tensor* grad_fill = nullptr;
    TF_RETURN_IF_ERROR(OutputBuffer(ctx, 0, TensorShape({rows, cols}), &grad_u));
    TF_RETURN_IF_ERROR(ctx->allocate_output(1, TensorShape({}), &grad_fill));
    const T* g = reinterpret_cast<const T*>(DataOf(dy));
    T* gu = grad_u->flat<T>().data();
    for (int i = 0; i < rows; ++i)
      std::memcpy(gu + i * size_t(cols), g + (i + w) * size_t(Q) + w, cols * sizeof(T));

    // the fill value's gradient: the ghost bands of physical boundaries
    T fill_sum = 0;
    const std::vector<Neighbour> nbs = Neighbours(site.rank);
    for (const Neighbour& nb : nbs) {
      if (nb.rank != MPI_PROC_NULL) continue;
      const Region ghost = Ghost(nb, rows, cols);
      for (int i = 0; i < ghost.rows.length; ++i)
        for (int j = 0; j < ghost.cols.length; ++j)
          fill_sum += g[(ghost.rows.begin + i) * size_t(Q) + ghost.cols.begin + j];
    }
    std::vector<Arrived> arrived;
    Tensor buffers;
    TF_RETURN_IF_ERROR(ExchangeBands(ctx, site, /*forward=*/false, dy, Q, tag, type, rows, cols,
                                     sequence, nbs, &arrived, &buffers));
    for (const Arrived& band : arrived)
      AddRegion(reinterpret_cast<const T*>(band.data), band.region, gu, cols);
    grad_fill->scalar<T>()() = fill_sum;
    return absl::OkStatus();
  }
};

REGISTER_KERNEL_BUILDER(ADCME_MPI_CPU_KERNEL("MPIHaloExchange").HostMemory("tag"),
                        HaloExchangeKernel);
REGISTER_KERNEL_BUILDER(ADCME_MPI_CPU_KERNEL("MPIHaloExchangeGrad").HostMemory("tag"),
                        HaloExchangeGradKernel);

}  // namespace
}  // namespace adcme_mpi
