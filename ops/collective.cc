// Collectives: MPISum (reduce to root), MPIAllreduce, MPIBcast, MPIGather,
// MPIScatter, MPIAllgather, MPIReduceScatter, MPIAlltoall, MPIScan. Adjoint
// pairs (adcme_mpi/wrappers/collectives.py): Sum <-> Bcast, Gather <->
// Scatter, Allreduce <-> Allreduce, Allgather <-> ReduceScatter (sums; the
// other reductions' gradients are built from forward ops there), Alltoall <->
// Alltoall (with the transposed splits), Scan <-> Scan in reverse rank order
// (sums only).
#include <algorithm>
#include <complex>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common.h"
#include "tensorflow/core/framework/op.h"

namespace adcme_mpi {
namespace {

using tensorflow::shape_inference::DimensionHandle;
using tensorflow::shape_inference::ShapeHandle;

// ---- interfaces and shape functions ----

// Communicator size known at graph-construction time, or -1.
int CommSizeOf(InferenceContext* c) {
  int64_t handle = 0;
  int initialized = 0, finalized = 0, size = -1;
  if (!c->GetAttr("comm", &handle).ok()) return -1;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (!initialized || finalized) return -1;
  if (MPI_Comm_size(MPI_Comm_f2c(static_cast<MPI_Fint>(handle)), &size) != MPI_SUCCESS) return -1;
  return size;
}

absl::Status SameShapeAsFirstInput(InferenceContext* c) {
  TF_RETURN_IF_ERROR(ScalarInputs(c, 1, c->num_inputs() - 2));
  c->set_output(0, c->input(0));
  return absl::OkStatus();
}

// MPIGather: (d0, ...) -> (size * d0, ...); a scalar gathers into (size,).
absl::Status GatherShape(InferenceContext* c) {
  TF_RETURN_IF_ERROR(ScalarInputs(c, 1, 1));
  ShapeHandle a = c->input(0);
  const int size = CommSizeOf(c);
  if (!c->RankKnown(a)) {
    c->set_output(0, c->UnknownShape());
    return absl::OkStatus();
  }
  DimensionHandle per_rank = c->Rank(a) == 0 ? c->MakeDim(1) : c->Dim(a, 0);
  DimensionHandle total = c->UnknownDim();
  if (size > 0) TF_RETURN_IF_ERROR(c->Multiply(per_rank, size, &total));
  ShapeHandle out;
  if (c->Rank(a) == 0) {
    out = c->Vector(total);
  } else {
    TF_RETURN_IF_ERROR(c->ReplaceDim(a, 0, total, &out));
  }
  c->set_output(0, out);
  return absl::OkStatus();
}

// MPIScatter: (size * k, ...) -> (k, ...).
absl::Status ScatterShape(InferenceContext* c) {
  TF_RETURN_IF_ERROR(ScalarInputs(c, 1, 1));
  ShapeHandle a;
  TF_RETURN_IF_ERROR(c->WithRankAtLeast(c->input(0), 1, &a));
  const int size = CommSizeOf(c);
  DimensionHandle part = c->UnknownDim();
  if (size > 0) TF_RETURN_IF_ERROR(c->Divide(c->Dim(a, 0), size, /*evenly_divisible=*/true, &part));
  ShapeHandle out;
  TF_RETURN_IF_ERROR(c->ReplaceDim(a, 0, part, &out));
  c->set_output(0, out);
  return absl::OkStatus();
}

// Every op is stateful (it talks to other processes), so TensorFlow never
// folds, deduplicates or prunes it. `comm` is the Fortran handle of the
// communicator the op uses; `grad_comm` the one its gradient ops use.
#define ROOTED_COLLECTIVE(Name, output, shape_fn, doc) \
  REGISTER_OP(Name)                                    \
      .Input("a: T")                                   \
      .Input("root: int32")                            \
      .Input("token: float")                           \
      .Output(output)                                  \
      .Output("token_out: float")                      \
      .Attr(ADCME_MPI_DATA_TYPES)                      \
      .Attr("comm: int")                               \
      .Attr("grad_comm: int")                          \
      .SetIsStateful()                                 \
      .SetShapeFn(WithToken<shape_fn>)                 \
      .Doc(doc)

// The reductions of MPISum and MPIAllreduce (op="mean" is the sum's, scaled
// in Python).
#define ADCME_MPI_REDUCTIONS "reduction: {'sum', 'max', 'min', 'prod'} = 'sum'"

ROOTED_COLLECTIVE("MPISum", "sum: T", SameShapeAsFirstInput,
                  "Reduction of `a` over ranks on `root`; zeros on the other ranks.")
    .Attr(ADCME_MPI_REDUCTIONS);
ROOTED_COLLECTIVE("MPIBcast", "b: T", SameShapeAsFirstInput, "`root`'s `a` on every rank.");
ROOTED_COLLECTIVE("MPIGather", "gathered: T", GatherShape,
                  "Ranks' `a` concatenated along axis 0 on `root`; zeros elsewhere.");
ROOTED_COLLECTIVE("MPIScatter", "part: T", ScatterShape,
                  "Rank r gets the r-th of `size` equal slices (axis 0) of `root`'s `a`.");

REGISTER_OP("MPIAllreduce")
    .Input("a: T")
    .Input("token: float")
    .Output("sum: T")
    .Output("token_out: float")
    .Attr(ADCME_MPI_DATA_TYPES)
    .Attr(ADCME_MPI_REDUCTIONS)
    .Attr("comm: int")
    .Attr("grad_comm: int")
    .SetIsStateful()
    .SetShapeFn(WithToken<SameShapeAsFirstInput>)
    .Doc("Reduction of `a` over ranks, on every rank.");

// MPIAllgather: (d0_r, ...) -> (sum_r d0_r, ...); a scalar gathers into (size,).
absl::Status AllgatherShape(InferenceContext* c) {
  ShapeHandle a = c->input(0);
  if (!c->RankKnown(a)) {
    c->set_output(0, c->UnknownShape());
    return absl::OkStatus();
  }
  if (c->Rank(a) == 0) {
    const int size = CommSizeOf(c);
    c->set_output(0, c->Vector(size > 0 ? c->MakeDim(size) : c->UnknownDim()));
    return absl::OkStatus();
  }
  ShapeHandle out;
  TF_RETURN_IF_ERROR(c->ReplaceDim(a, 0, c->UnknownDim(), &out));
  c->set_output(0, out);
  return absl::OkStatus();
}

REGISTER_OP("MPIAllgather")
    .Input("a: T")
    .Input("token: float")
    .Output("gathered: T")
    .Output("token_out: float")
    .Attr(ADCME_MPI_DATA_TYPES)
    .Attr("comm: int")
    .Attr("grad_comm: int")
    .SetIsStateful()
    .SetShapeFn(WithToken<AllgatherShape>)
    .Doc("Every rank's `a` joined along axis 0 in rank order; first dimensions may differ.");

// MPIReduceScatter: (d0, ...) -> (counts[rank], ...).
absl::Status ReduceScatterShape(InferenceContext* c) {
  ShapeHandle a, counts, out;
  TF_RETURN_IF_ERROR(c->WithRankAtLeast(c->input(0), 1, &a));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &counts));
  TF_RETURN_IF_ERROR(c->ReplaceDim(a, 0, c->UnknownDim(), &out));
  c->set_output(0, out);
  return absl::OkStatus();
}

REGISTER_OP("MPIReduceScatter")
    .Input("a: T")
    .Input("counts: int64")
    .Input("token: float")
    .Output("part: T")
    .Output("token_out: float")
    .Attr(ADCME_MPI_DATA_TYPES)
    .Attr(ADCME_MPI_REDUCTIONS)
    .Attr("comm: int")
    .Attr("grad_comm: int")
    .SetIsStateful()
    .SetShapeFn(WithToken<ReduceScatterShape>)
    .Doc(
        "Rank r gets the reduction over ranks of the r-th slice (axis 0) of `a`. `counts`: empty "
        "(equal slices), every rank's slice length (the same on every rank), or this rank's own "
        "(one entry; the lengths are exchanged).");

REGISTER_OP("MPIScan")
    .Input("a: T")
    .Input("token: float")
    .Output("scanned: T")
    .Output("token_out: float")
    .Attr(ADCME_MPI_DATA_TYPES)
    .Attr(ADCME_MPI_REDUCTIONS)
    .Attr("exclusive: bool = false")
    .Attr("reverse: bool = false")
    .Attr("comm: int")
    .Attr("grad_comm: int")
    .SetIsStateful()
    .SetShapeFn(WithToken<SameShapeAsFirstInput>)
    .Doc(
        "Prefix reduction over ranks, elementwise: rank r gets the reduction of ranks 0..r's `a` "
        "(exclusive: 0..r-1; rank 0 gets the reduction's identity). `reverse`: in reverse rank "
        "order (r..size-1, or r+1..size-1), mpi_scan's gradient.");

// MPIAlltoall: (d0, ...) -> (what arrives, ...): equal splits keep a's shape;
// given splits leave the first dimension to the run. `received`: how many
// slices came from each rank (the splits of the adjoint).
absl::Status AlltoallShape(InferenceContext* c) {
  ShapeHandle a, splits, out;
  TF_RETURN_IF_ERROR(c->WithRankAtLeast(c->input(0), 1, &a));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &splits));
  bool given = false;
  TF_RETURN_IF_ERROR(c->GetAttr("given_splits", &given));
  out = a;
  if (given) TF_RETURN_IF_ERROR(c->ReplaceDim(a, 0, c->UnknownDim(), &out));
  c->set_output(0, out);
  const int size = CommSizeOf(c);
  c->set_output(1, c->Vector(size > 0 ? c->MakeDim(size) : c->UnknownDim()));
  return absl::OkStatus();
}

REGISTER_OP("MPIAlltoall")
    .Input("a: T")
    .Input("splits: int64")
    .Input("token: float")
    .Output("joined: T")
    .Output("received: int64")
    .Output("token_out: float")
    .Attr(ADCME_MPI_DATA_TYPES)
    .Attr("given_splits: bool = false")
    .Attr("comm: int")
    .Attr("grad_comm: int")
    .SetIsStateful()
    .SetShapeFn(WithToken<AlltoallShape>)
    .Doc(
        "`a` split along axis 0 into one piece per rank, piece k sent to rank k; the output joins "
        "the pieces received, in rank order. Without `given_splits` the pieces are equal (and "
        "`splits` is ignored); with it, `splits` holds this rank's piece lengths (they may differ "
        "across ranks; the receive lengths are exchanged). `received`: the lengths received.");

// ---- kernels ----

void ZeroFill(Tensor* t) {
  if (t->TotalBytes() > 0) std::memset(DataOf(*t), 0, t->TotalBytes());
}

// The MPI_Op of a `reduction` attr, and its index for the cross-rank check.
constexpr const char* kReductions[] = {"sum", "max", "min", "prod"};
struct Reduction {
  int64_t index = 0;
  MPI_Op op = MPI_SUM;
  explicit Reduction(const std::string& name) {
    for (int64_t i = 0; i < 4; ++i)
      if (name == kReductions[i]) index = i;
    const MPI_Op ops[] = {MPI_SUM, MPI_MAX, MPI_MIN, MPI_PROD};
    op = ops[index];
  }
  Alike AsAlike() const {
    Alike alike;
    alike.name = "op";
    alike.value = index;
    alike.show = [](int64_t i) { return std::string(i >= 0 && i < 4 ? kReductions[i] : "?"); };
    return alike;
  }
};

// float16 and bfloat16 reduce in float32 (MPI has no 2-byte float
// arithmetic, and a sum rounded to 8 or 11 bits at every rank would lose the
// small terms): a reducing kernel widens its input into a float32 buffer,
// reduces that, and rounds once into the output. max and min are exact so;
// a prod is rounded once instead of once per rank.
bool IsNarrow(DataType t) { return t == tensorflow::DT_HALF || t == tensorflow::DT_BFLOAT16; }

absl::Status Widen(OpKernelContext* ctx, const Tensor& a, Tensor* wide) {
  TF_RETURN_IF_ERROR(ctx->allocate_temp(tensorflow::DT_FLOAT, a.shape(), wide));
  if (a.dtype() == tensorflow::DT_HALF) {
    wide->flat<float>() = a.flat<Eigen::half>().cast<float>();
  } else {
    wide->flat<float>() = a.flat<tensorflow::bfloat16>().cast<float>();
  }
  return absl::OkStatus();
}

void Narrow(const Tensor& wide, Tensor* out) {
  if (out->dtype() == tensorflow::DT_HALF) {
    out->flat<Eigen::half>() = wide.flat<float>().cast<Eigen::half>();
  } else {
    out->flat<tensorflow::bfloat16>() = wide.flat<float>().cast<tensorflow::bfloat16>();
  }
}

// What a reducing kernel reduces: `a` itself, or for float16/bfloat16 its
// float32 widening (`wide`). `type` is the MPI datatype of `data`.
struct Reduced {
  const Tensor* data = nullptr;
  MPI_Datatype type = MPI_DATATYPE_NULL;
  Tensor wide;
  bool narrow = false;
};

// max and min of complex numbers are undefined (MPI refuses them too);
// the Python wrappers say so first, this is for the raw ops.
absl::Status ReducibleAs(OpKernelContext* ctx, const CallSite& site, const std::string& reduction,
                         const Tensor& a, MPI_Datatype type, Reduced* r) {
  if (a.dtype() == tensorflow::DT_COMPLEX64 || a.dtype() == tensorflow::DT_COMPLEX128) {
    if (reduction == "max" || reduction == "min")
      return site.InvalidArgument(absl::StrCat("argument 'op' = '", reduction,
                                               "' is not defined for ",
                                               tensorflow::DataTypeString(a.dtype()),
                                               " (complex numbers are not ordered); use sum, "
                                               "mean or prod"));
  }
  r->narrow = IsNarrow(a.dtype());
  if (!r->narrow) {
    r->data = &a;
    r->type = type;
    return absl::OkStatus();
  }
  TF_RETURN_IF_ERROR(Widen(ctx, a, &r->wide));
  r->data = &r->wide;
  r->type = MPI_FLOAT;
  return absl::OkStatus();
}

std::string ReductionAttr(OpKernelConstruction* c) {
  std::string name = "sum";
  const absl::Status status = c->GetAttr("reduction", &name);
  if (!status.ok()) c->CtxFailure(status);
  return name;
}

// Everything a collective needs to know about its data argument `a`.
struct Operand {
  const Tensor* tensor = nullptr;
  MPI_Datatype type = MPI_DATATYPE_NULL;
  int count = 0;
};

absl::Status PrepareOperand(const CallSite& site, const Tensor& a, Operand* op) {
  op->tensor = &a;
  TF_RETURN_IF_ERROR(DatatypeArg(site, "a", a, &op->type));
  return CountOf(site, "a", a.NumElements(), &op->count);
}

// A collective with a root rank (input 1).
class RootedKernel : public MpiKernel {
 public:
  RootedKernel(OpKernelConstruction* c, OpKind kind) : MpiKernel(c), kind_(kind) {}

 protected:
  absl::Status Run(OpKernelContext* ctx, const CallSite& site) final {
    int root = 0;
    TF_RETURN_IF_ERROR(ScalarIntArg(ctx, 1, "root", 0, site.size - 1, site, &root));
    Operand a;
    TF_RETURN_IF_ERROR(PrepareOperand(site, ctx->input(0), &a));
    return RunRooted(ctx, site, root, a);
  }
  // Subclasses call this before their collective (after allocating the
  // output, so small data can travel with the check: see Carried).
  absl::Status CheckAcrossRanks(const CallSite& site, int root, const Operand& a,
                                Carried* carried = nullptr, const Alike& alike = {}) const {
    return CheckSameAcrossRanks(site, kind_, "a", *a.tensor, root, carried, alike);
  }
  virtual absl::Status RunRooted(OpKernelContext* ctx, const CallSite& site, int root,
                                 const Operand& a) = 0;

 private:
  const OpKind kind_;
};

class SumKernel : public RootedKernel {
 public:
  explicit SumKernel(OpKernelConstruction* c)
      : RootedKernel(c, OpKind::kMPISum), name_(ReductionAttr(c)), reduction_(name_) {}
  absl::Status RunRooted(OpKernelContext* ctx, const CallSite& site, int root,
                         const Operand& a) override {
    Reduced r;
    TF_RETURN_IF_ERROR(ReducibleAs(ctx, site, name_, *a.tensor, a.type, &r));
    Tensor* out = nullptr;
    const bool is_root = site.rank == root;
    // Root: reduce in place into the input's buffer when TF can hand it over
    // (a widened input: in place into the float32 buffer, rounded after).
    TF_RETURN_IF_ERROR(OutputBuffer(ctx, 0, a.tensor->shape(), &out));
    char* result = r.narrow ? DataOf(r.wide) : DataOf(*out);
    Carried carried;
    carried.input = r.data;
    carried.sum = true;
    carried.output = result;
    // (small sums ride in the check's reduction; other reductions do not)
    TF_RETURN_IF_ERROR(CheckAcrossRanks(
        site, root, a, reduction_.op == MPI_SUM ? &carried : nullptr, reduction_.AsAlike()));
    bool zeroed = false;
    if (!carried.done) {
      const bool in_place = result == DataOf(*r.data);
      RequestSet requests(site);
      requests.Keep(*a.tensor);
      requests.Keep(*r.data);
      requests.Keep(*out);
      TF_RETURN_IF_ERROR(
          requests.Posted(MPI_Ireduce(is_root && in_place ? MPI_IN_PLACE : DataOf(*r.data),
                                      is_root ? result : nullptr, a.count, r.type, reduction_.op,
                                      root, site.comm, requests.Next()),
                          "MPI_Ireduce"));
      // A non-root rank's output is zeros, which MPI never touches: write
      // them while the reduction is under way, unless the output is the
      // input's own buffer (forwarded), which MPI is still sending from.
      if (!is_root && !out->SharesBufferWith(*a.tensor) && !out->SharesBufferWith(*r.data)) {
        ZeroFill(out);
        zeroed = true;
      }
      TF_RETURN_IF_ERROR(requests.Wait("every rank to join the reduction"));
    }
    if (!is_root) {
      if (!zeroed) ZeroFill(out);
    } else if (r.narrow) {
      Narrow(r.wide, out);
    }
    return absl::OkStatus();
  }

 private:
  const std::string name_;
  const Reduction reduction_;
};

class BcastKernel : public RootedKernel {
 public:
  explicit BcastKernel(OpKernelConstruction* c) : RootedKernel(c, OpKind::kMPIBcast) {}
  absl::Status RunRooted(OpKernelContext* ctx, const CallSite& site, int root,
                         const Operand& a) override {
    char* buffer = nullptr;
    Carried carried;
    carried.input = a.tensor;
    carried.is_root = site.rank == root;
    if (carried.is_root) {
      ctx->set_output(0, *a.tensor);  // zero copy: the root returns its own input
      buffer = DataOf(*a.tensor);     // and MPI only reads from it
    } else {
      // Other ranks' values are overwritten: receive into the input's buffer when possible.
      Tensor* out = nullptr;
      TF_RETURN_IF_ERROR(OutputBuffer(ctx, 0, a.tensor->shape(), &out));
      buffer = DataOf(*out);
      carried.output = buffer;
    }
    TF_RETURN_IF_ERROR(CheckAcrossRanks(site, root, a, &carried));
    if (carried.done) return absl::OkStatus();
    RequestSet requests(site);
    requests.Keep(*a.tensor);
    if (!carried.is_root) requests.Keep(*ctx->mutable_output(0));
    TF_RETURN_IF_ERROR(requests.Posted(
        MPI_Ibcast(buffer, a.count, a.type, root, site.comm, requests.Next()), "MPI_Ibcast"));
    return requests.Wait(absl::StrCat("root rank ", root));
  }
};

class GatherKernel : public RootedKernel {
 public:
  explicit GatherKernel(OpKernelConstruction* c) : RootedKernel(c, OpKind::kMPIGather) {}
  absl::Status RunRooted(OpKernelContext* ctx, const CallSite& site, int root,
                         const Operand& a) override {
    TensorShape shape = a.tensor->shape();
    if (shape.dims() == 0) {
      shape.AddDim(site.size);
    } else {
      shape.set_dim(0, shape.dim_size(0) * site.size);
    }
    TF_RETURN_IF_ERROR(CheckAcrossRanks(site, root, a));
    Tensor* out = nullptr;
    TF_RETURN_IF_ERROR(OutputBuffer(ctx, 0, shape, &out));
    const bool is_root = site.rank == root;
    RequestSet requests(site);
    requests.Keep(*a.tensor);
    requests.Keep(*out);
    TF_RETURN_IF_ERROR(requests.Posted(
        MPI_Igather(DataOf(*a.tensor), a.count, a.type, is_root ? DataOf(*out) : nullptr, a.count,
                    a.type, root, site.comm, requests.Next()),
        "MPI_Igather"));
    // A non-root rank's output is zeros (SIZE times its input), which MPI
    // never touches: written while the gather is under way.
    if (!is_root) ZeroFill(out);
    return requests.Wait("every rank to join the gather");
  }
};

class ScatterKernel : public RootedKernel {
 public:
  explicit ScatterKernel(OpKernelConstruction* c) : RootedKernel(c, OpKind::kMPIScatter) {}
  absl::Status RunRooted(OpKernelContext* ctx, const CallSite& site, int root,
                         const Operand& a) override {
    TF_RETURN_IF_ERROR(CheckAcrossRanks(site, root, a));
    TensorShape shape = a.tensor->shape();
    if (shape.dims() == 0 || shape.dim_size(0) % site.size != 0)
      return site.InvalidArgument(absl::StrCat(
          "argument 'a' must have a first dimension divisible by the communicator size ", site.size,
          ", got shape ", shape.DebugString()));
    shape.set_dim(0, shape.dim_size(0) / site.size);
    Tensor* out = nullptr;
    TF_RETURN_IF_ERROR(OutputBuffer(ctx, 0, shape, &out));
    const int part = a.count / site.size;
    RequestSet requests(site);
    requests.Keep(*a.tensor);
    requests.Keep(*out);
    TF_RETURN_IF_ERROR(
        requests.Posted(MPI_Iscatter(site.rank == root ? DataOf(*a.tensor) : nullptr, part, a.type,
                                     DataOf(*out), part, a.type, root, site.comm, requests.Next()),
                        "MPI_Iscatter"));
    return requests.Wait(absl::StrCat("root rank ", root));
  }
};

class AllreduceKernel : public MpiKernel {
 public:
  explicit AllreduceKernel(OpKernelConstruction* c)
      : MpiKernel(c), name_(ReductionAttr(c)), reduction_(name_) {}
  absl::Status Run(OpKernelContext* ctx, const CallSite& site) override {
    Operand a;
    TF_RETURN_IF_ERROR(PrepareOperand(site, ctx->input(0), &a));
    Reduced r;
    TF_RETURN_IF_ERROR(ReducibleAs(ctx, site, name_, *a.tensor, a.type, &r));
    Tensor* out = nullptr;
    // Reuse the input buffer when TF lets us (it is not needed elsewhere);
    // a widened input is reduced in place in its float32 buffer.
    TF_RETURN_IF_ERROR(OutputBuffer(ctx, 0, a.tensor->shape(), &out));
    char* result = r.narrow ? DataOf(r.wide) : DataOf(*out);
    Carried carried;
    carried.input = r.data;
    carried.sum = true;
    carried.output = result;
    TF_RETURN_IF_ERROR(CheckSameAcrossRanks(site, OpKind::kMPIAllreduce, "a", *a.tensor, -1,
                                            reduction_.op == MPI_SUM ? &carried : nullptr,
                                            reduction_.AsAlike()));
    if (!carried.done) {
      const bool in_place = result == DataOf(*r.data);
      RequestSet requests(site);
      requests.Keep(*a.tensor);
      requests.Keep(*r.data);
      requests.Keep(*out);
      TF_RETURN_IF_ERROR(
          requests.Posted(MPI_Iallreduce(in_place ? MPI_IN_PLACE : DataOf(*r.data), result, a.count,
                                         r.type, reduction_.op, site.comm, requests.Next()),
                          "MPI_Iallreduce"));
      TF_RETURN_IF_ERROR(requests.Wait("every rank to join the allreduce"));
    }
    if (r.narrow) Narrow(r.wide, out);
    return absl::OkStatus();
  }

 private:
  const std::string name_;
  const Reduction reduction_;
};

// Elements of one slice along axis 0 (a scalar: 1).
int64_t InnerSize(const Tensor& t) {
  int64_t inner = 1;
  for (int d = 1; d < t.dims(); ++d) inner *= t.dim_size(d);
  return inner;
}

// MPI's int counts and displacements, in elements, of slices of `inner`
// elements each, `rows[r]` slices from rank r.
absl::Status Layout(const CallSite& site, const char* arg, const std::vector<int64_t>& rows,
                    int64_t inner, std::vector<int>* counts, std::vector<int>* displs) {
  counts->resize(rows.size());
  displs->resize(rows.size());
  int64_t offset = 0;
  for (size_t r = 0; r < rows.size(); ++r) {
    TF_RETURN_IF_ERROR(CountOf(site, arg, rows[r] * inner, &(*counts)[r]));
    TF_RETURN_IF_ERROR(CountOf(site, arg, offset, &(*displs)[r]));
    offset += rows[r] * inner;
  }
  int total = 0;  // the whole buffer must fit MPI's int counts too
  return CountOf(site, arg, offset, &total);
}

// Every rank's `mine` (one int64 each), in rank order.
absl::Status ExchangeCounts(const CallSite& site, int64_t mine, std::vector<int64_t>* all) {
  RequestSet requests(site);
  auto sent = std::make_shared<int64_t>(mine);
  auto got = std::make_shared<std::vector<int64_t>>(site.size);
  requests.Keep(sent);
  requests.Keep(got);
  TF_RETURN_IF_ERROR(requests.Posted(MPI_Iallgather(sent.get(), 1, MPI_INT64_T, got->data(), 1,
                                                    MPI_INT64_T, site.comm, requests.Next()),
                                     "MPI_Iallgather"));
  TF_RETURN_IF_ERROR(requests.Wait("every rank's length along axis 0"));
  *all = *got;
  return absl::OkStatus();
}

class AllgatherKernel : public MpiKernel {
 public:
  using MpiKernel::MpiKernel;
  absl::Status Run(OpKernelContext* ctx, const CallSite& site) override {
    Operand a;
    TF_RETURN_IF_ERROR(PrepareOperand(site, ctx->input(0), &a));
    Alike alike;
    alike.any_first_dim = true;
    TF_RETURN_IF_ERROR(
        CheckSameAcrossRanks(site, OpKind::kMPIAllgather, "a", *a.tensor, -1, nullptr, alike));
    const bool scalar = a.tensor->dims() == 0;
    std::vector<int64_t> rows(site.size, 1);
    if (!scalar) TF_RETURN_IF_ERROR(ExchangeCounts(site, a.tensor->dim_size(0), &rows));
    const int64_t inner = InnerSize(*a.tensor);
    std::vector<int> counts, displs;
    TF_RETURN_IF_ERROR(Layout(site, "a", rows, inner, &counts, &displs));
    TensorShape shape = a.tensor->shape();
    int64_t total = 0;
    for (int64_t n : rows) total += n;
    if (scalar) {
      shape.AddDim(site.size);
    } else {
      shape.set_dim(0, total);
    }
    Tensor* out = nullptr;
    TF_RETURN_IF_ERROR(OutputBuffer(ctx, 0, shape, &out));
    RequestSet requests(site);
    requests.Keep(*a.tensor);
    requests.Keep(*out);
    TF_RETURN_IF_ERROR(requests.Posted(
        MPI_Iallgatherv(DataOf(*a.tensor), a.count, a.type, DataOf(*out), counts.data(),
                        displs.data(), a.type, site.comm, requests.Next()),
        "MPI_Iallgatherv"));
    return requests.Wait("every rank to join the allgather");
  }
};

class ReduceScatterKernel : public MpiKernel {
 public:
  explicit ReduceScatterKernel(OpKernelConstruction* c)
      : MpiKernel(c), name_(ReductionAttr(c)), reduction_(name_) {}
  absl::Status Run(OpKernelContext* ctx, const CallSite& site) override {
    Operand a;
    TF_RETURN_IF_ERROR(PrepareOperand(site, ctx->input(0), &a));
    Reduced r;
    TF_RETURN_IF_ERROR(ReducibleAs(ctx, site, name_, *a.tensor, a.type, &r));
    const Tensor& given = ctx->input(1);
    if (a.tensor->dims() == 0)
      return site.InvalidArgument("argument 'a' must have at least one dimension, got a scalar");
    const int64_t d0 = a.tensor->dim_size(0);
    const int64_t n = given.NumElements();
    const int64_t* c = given.flat<int64_t>().data();
    // (local checks first: a rank with bad counts fails on every rank)
    if (n != 0 && n != 1 && n != site.size)
      return site.InvalidArgument(absl::StrCat("argument 'counts' has ", n,
                                               " entries; it must have none (equal slices), ",
                                               site.size, " (every rank's) or 1 (this rank's)"));
    if (n == 0 && d0 % site.size != 0)
      return site.InvalidArgument(absl::StrCat(
          "argument 'a' must have a first dimension divisible by the communicator size ", site.size,
          " when 'counts' is not given, got shape ", a.tensor->shape().DebugString()));
    for (int64_t i = 0; i < n; ++i)
      if (c[i] < 0)
        return site.InvalidArgument(absl::StrCat("argument 'counts' has a negative entry ", c[i]));
    std::vector<int64_t> rows(site.size, n == 0 ? d0 / site.size : 0);
    if (n == static_cast<int64_t>(site.size)) rows.assign(c, c + n);
    int64_t sum = 0;
    for (int64_t r : rows) sum += r;
    if (n == site.size && sum != d0)
      return site.InvalidArgument(absl::StrCat("argument 'counts' adds up to ", sum,
                                               " but 'a' has ", d0, " slices along axis 0"));
    // every rank's counts, and how they were given, must agree
    uint64_t hash = 1469598103934665603ULL;
    for (int64_t r : rows) hash = (hash ^ static_cast<uint64_t>(r)) * 1099511628211ULL;
    Alike alike = reduction_.AsAlike();
    alike.value = static_cast<int64_t>((hash >> 8) * 4 + reduction_.index);
    alike.name = n == 1 ? "op" : "op' and 'counts";
    alike.show = [](int64_t word) { return std::string(kReductions[word & 3]); };
    TF_RETURN_IF_ERROR(
        CheckSameAcrossRanks(site, OpKind::kMPIReduceScatter, "a", *a.tensor, -1, nullptr, alike));
    if (n == 1) {
      TF_RETURN_IF_ERROR(ExchangeCounts(site, c[0], &rows));
      sum = 0;
      for (int64_t r : rows) sum += r;
      if (sum != d0)
        return site.InvalidArgument(absl::StrCat("the ranks' 'counts' add up to ", sum,
                                                 " but 'a' has ", d0, " slices along axis 0"));
    }
    const int64_t inner = InnerSize(*a.tensor);
    std::vector<int> counts, displs;
    TF_RETURN_IF_ERROR(Layout(site, "a", rows, inner, &counts, &displs));
    TensorShape shape = a.tensor->shape();
    shape.set_dim(0, rows[site.rank]);
    Tensor* out = nullptr;
    TF_RETURN_IF_ERROR(OutputBuffer(ctx, 0, shape, &out));
    Tensor wide_out;  // (a widened input's float32 part, rounded into out after)
    if (r.narrow) TF_RETURN_IF_ERROR(ctx->allocate_temp(tensorflow::DT_FLOAT, shape, &wide_out));
    const Tensor& part = r.narrow ? wide_out : *out;
    RequestSet requests(site);
    requests.Keep(*a.tensor);
    requests.Keep(*r.data);
    requests.Keep(part);
    TF_RETURN_IF_ERROR(
        requests.Posted(MPI_Ireduce_scatter(DataOf(*r.data), DataOf(part), counts.data(), r.type,
                                            reduction_.op, site.comm, requests.Next()),
                        "MPI_Ireduce_scatter"));
    TF_RETURN_IF_ERROR(requests.Wait("every rank to join the reduce-scatter"));
    if (r.narrow) Narrow(wide_out, out);
    return absl::OkStatus();
  }

 private:
  const std::string name_;
  const Reduction reduction_;
};

// The identity of a reduction for an exclusive scan's first rank: 0 (sum),
// 1 (prod), the lowest value of the dtype for max (-inf for floats), the
// highest for min (+inf for floats).
template <typename T>
void FillIdentity(const std::string& reduction, Tensor* t) {
  constexpr bool kFloat = std::numeric_limits<T>::has_infinity;
  T value = T(0);
  if (reduction == "prod") value = T(1);
  if (reduction == "max")
    value = kFloat ? -std::numeric_limits<T>::infinity() : std::numeric_limits<T>::lowest();
  if (reduction == "min")
    value = kFloat ? std::numeric_limits<T>::infinity() : std::numeric_limits<T>::max();
  T* data = reinterpret_cast<T*>(DataOf(*t));
  for (int64_t i = 0; i < t->NumElements(); ++i) data[i] = value;
}

class ScanKernel : public MpiKernel {
 public:
  explicit ScanKernel(OpKernelConstruction* c)
      : MpiKernel(c), name_(ReductionAttr(c)), reduction_(name_) {
    OP_REQUIRES_OK(c, c->GetAttr("exclusive", &exclusive_));
    OP_REQUIRES_OK(c, c->GetAttr("reverse", &reverse_));
  }
  absl::Status Run(OpKernelContext* ctx, const CallSite& site) override {
    Operand a;
    TF_RETURN_IF_ERROR(PrepareOperand(site, ctx->input(0), &a));
    Reduced r;
    TF_RETURN_IF_ERROR(ReducibleAs(ctx, site, name_, *a.tensor, a.type, &r));
    Tensor* out = nullptr;
    TF_RETURN_IF_ERROR(OutputBuffer(ctx, 0, a.tensor->shape(), &out));
    Tensor wide_out;  // (a widened input's float32 scan, rounded into out after)
    if (r.narrow)
      TF_RETURN_IF_ERROR(ctx->allocate_temp(tensorflow::DT_FLOAT, a.tensor->shape(), &wide_out));
    Tensor* scanned = r.narrow ? &wide_out : out;
    // the reduction, inclusive or exclusive, and the direction: one word
    Alike alike;
    alike.name = "op' and 'exclusive";
    alike.value = reduction_.index + 4 * exclusive_ + 8 * reverse_;
    alike.show = [](int64_t word) {
      return absl::StrCat(kReductions[word & 3], (word & 4) ? " (exclusive" : " (inclusive",
                          (word & 8) ? ", in reverse rank order)" : ")");
    };
    TF_RETURN_IF_ERROR(
        CheckSameAcrossRanks(site, OpKind::kMPIScan, "a", *a.tensor, -1, nullptr, alike));
    MPI_Comm comm = site.comm;
    bool temporary = false;
    if (reverse_) TF_RETURN_IF_ERROR(ReversedComm(site, &comm, &temporary));
    // (a split made for this run only: freed on every return path)
    std::unique_ptr<MPI_Comm, void (*)(MPI_Comm*)> split(temporary ? &comm : nullptr,
                                                         [](MPI_Comm* c) { MPI_Comm_free(c); });
    const bool first = (reverse_ ? site.size - 1 - site.rank : site.rank) == 0;
    RequestSet requests(site);
    requests.Keep(*a.tensor);
    requests.Keep(*r.data);
    requests.Keep(*scanned);
    if (exclusive_) {
      TF_RETURN_IF_ERROR(requests.Posted(MPI_Iexscan(DataOf(*r.data), DataOf(*scanned), a.count,
                                                     r.type, reduction_.op, comm, requests.Next()),
                                         "MPI_Iexscan"));
    } else {
      TF_RETURN_IF_ERROR(requests.Posted(MPI_Iscan(DataOf(*r.data), DataOf(*scanned), a.count,
                                                   r.type, reduction_.op, comm, requests.Next()),
                                         "MPI_Iscan"));
    }
    TF_RETURN_IF_ERROR(requests.Wait("every rank to join the scan"));
    // MPI leaves the exclusive scan's first rank undefined
    if (exclusive_ && first) {
      switch (scanned->dtype()) {
        case tensorflow::DT_FLOAT: FillIdentity<float>(name_, scanned); break;
        case tensorflow::DT_DOUBLE: FillIdentity<double>(name_, scanned); break;
        case tensorflow::DT_INT32: FillIdentity<int32_t>(name_, scanned); break;
        case tensorflow::DT_COMPLEX64: FillIdentity<std::complex<float>>(name_, scanned); break;
        case tensorflow::DT_COMPLEX128: FillIdentity<std::complex<double>>(name_, scanned); break;
        default: FillIdentity<int64_t>(name_, scanned); break;
      }
    }
    if (r.narrow) Narrow(wide_out, out);
    return absl::OkStatus();
  }

 private:
  const std::string name_;
  const Reduction reduction_;
  bool exclusive_ = false;
  bool reverse_ = false;
};

class AlltoallKernel : public MpiKernel {
 public:
  explicit AlltoallKernel(OpKernelConstruction* c) : MpiKernel(c) {
    OP_REQUIRES_OK(c, c->GetAttr("given_splits", &given_));
  }
  absl::Status Run(OpKernelContext* ctx, const CallSite& site) override {
    Operand a;
    TF_RETURN_IF_ERROR(PrepareOperand(site, ctx->input(0), &a));
    if (a.tensor->dims() == 0)
      return site.InvalidArgument("argument 'a' must have at least one dimension, got a scalar");
    const int64_t d0 = a.tensor->dim_size(0);
    const Tensor& splits = ctx->input(1);
    const int64_t n = splits.NumElements();
    const int64_t* s = splits.flat<int64_t>().data();
    // (local checks first: a rank with bad splits fails on every rank)
    if (given_ && n != site.size)
      return site.InvalidArgument(absl::StrCat(
          "argument 'splits' has ", n, " entries; it must have one per rank (", site.size, ")"));
    if (!given_ && d0 % site.size != 0)
      return site.InvalidArgument(absl::StrCat(
          "argument 'a' must have a first dimension divisible by the communicator size ", site.size,
          " when 'splits' is not given, got shape ", a.tensor->shape().DebugString()));
    std::vector<int64_t> sent(site.size, given_ ? 0 : d0 / site.size);
    if (given_) {
      int64_t sum = 0;
      for (int64_t i = 0; i < n; ++i) {
        if (s[i] < 0)
          return site.InvalidArgument(
              absl::StrCat("argument 'splits' has a negative entry ", s[i], " (for rank ", i, ")"));
        sum += s[i];
      }
      if (sum != d0)
        return site.InvalidArgument(absl::StrCat("argument 'splits' adds up to ", sum,
                                                 " but 'a' has ", d0, " slices along axis 0"));
      sent.assign(s, s + n);
    }
    // dtype and the dimensions after the first agree everywhere; splits are
    // given everywhere or nowhere, and without them the first dimension agrees
    Alike alike;
    alike.any_first_dim = true;
    alike.name = "splits' (given or None) and, when None, the first dimension of 'a";
    alike.value = given_ ? -1 : d0;
    alike.show = [](int64_t v) {
      return v < 0 ? std::string("given") : absl::StrCat("None with a.shape[0] = ", v);
    };
    TF_RETURN_IF_ERROR(
        CheckSameAcrossRanks(site, OpKind::kMPIAlltoall, "a", *a.tensor, -1, nullptr, alike));
    std::vector<int64_t> received = sent;  // equal pieces: as many arrive as leave
    if (given_) TF_RETURN_IF_ERROR(ExchangeSplits(site, sent, &received));
    const int64_t inner = InnerSize(*a.tensor);
    std::vector<int> send_counts, send_displs, recv_counts, recv_displs;
    TF_RETURN_IF_ERROR(Layout(site, "a", sent, inner, &send_counts, &send_displs));
    TF_RETURN_IF_ERROR(Layout(site, "a", received, inner, &recv_counts, &recv_displs));
    TensorShape shape = a.tensor->shape();
    int64_t total = 0;
    for (int64_t r : received) total += r;
    shape.set_dim(0, total);
    Tensor *out = nullptr, *lengths = nullptr;
    TF_RETURN_IF_ERROR(OutputBuffer(ctx, 0, shape, &out));
    TF_RETURN_IF_ERROR(ctx->allocate_output(1, TensorShape({site.size}), &lengths));
    std::copy(received.begin(), received.end(), lengths->flat<int64_t>().data());
    RequestSet requests(site);
    requests.Keep(*a.tensor);
    requests.Keep(*out);
    if (given_) {
      auto layout = std::make_shared<std::vector<std::vector<int>>>(
          std::vector<std::vector<int>>{send_counts, send_displs, recv_counts, recv_displs});
      requests.Keep(layout);
      const std::vector<std::vector<int>>& l = *layout;
      TF_RETURN_IF_ERROR(requests.Posted(
          MPI_Ialltoallv(DataOf(*a.tensor), l[0].data(), l[1].data(), a.type, DataOf(*out),
                         l[2].data(), l[3].data(), a.type, site.comm, requests.Next()),
          "MPI_Ialltoallv"));
    } else {
      TF_RETURN_IF_ERROR(
          requests.Posted(MPI_Ialltoall(DataOf(*a.tensor), send_counts[0], a.type, DataOf(*out),
                                        recv_counts[0], a.type, site.comm, requests.Next()),
                          "MPI_Ialltoall"));
    }
    return requests.Wait("every rank to join the alltoall");
  }

 private:
  // How many slices each rank sends this one, from what this one sends each.
  static absl::Status ExchangeSplits(const CallSite& site, const std::vector<int64_t>& sent,
                                     std::vector<int64_t>* received) {
    RequestSet requests(site);
    auto out = std::make_shared<std::vector<int64_t>>(sent);
    auto in = std::make_shared<std::vector<int64_t>>(site.size);
    requests.Keep(out);
    requests.Keep(in);
    TF_RETURN_IF_ERROR(requests.Posted(MPI_Ialltoall(out->data(), 1, MPI_INT64_T, in->data(), 1,
                                                     MPI_INT64_T, site.comm, requests.Next()),
                                       "MPI_Ialltoall"));
    TF_RETURN_IF_ERROR(requests.Wait("every rank's splits"));
    *received = *in;
    return absl::OkStatus();
  }

  bool given_ = false;
};

REGISTER_KERNEL_BUILDER(ADCME_MPI_CPU_KERNEL("MPISum").HostMemory("root"), SumKernel);
REGISTER_KERNEL_BUILDER(ADCME_MPI_CPU_KERNEL("MPIBcast").HostMemory("root"), BcastKernel);
REGISTER_KERNEL_BUILDER(ADCME_MPI_CPU_KERNEL("MPIGather").HostMemory("root"), GatherKernel);
REGISTER_KERNEL_BUILDER(ADCME_MPI_CPU_KERNEL("MPIScatter").HostMemory("root"), ScatterKernel);
REGISTER_KERNEL_BUILDER(ADCME_MPI_CPU_KERNEL("MPIAllreduce"), AllreduceKernel);
REGISTER_KERNEL_BUILDER(ADCME_MPI_CPU_KERNEL("MPIAllgather"), AllgatherKernel);
REGISTER_KERNEL_BUILDER(ADCME_MPI_CPU_KERNEL("MPIReduceScatter").HostMemory("counts"),
                        ReduceScatterKernel);
REGISTER_KERNEL_BUILDER(ADCME_MPI_CPU_KERNEL("MPIAlltoall").HostMemory("splits"), AlltoallKernel);
REGISTER_KERNEL_BUILDER(ADCME_MPI_CPU_KERNEL("MPIScan"), ScanKernel);

}  // namespace
}  // namespace adcme_mpi
