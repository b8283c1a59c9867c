// Collectives: MPISum (reduce to root), MPIAllreduce, MPIBcast, MPIGather,
// MPIScatter. Adjoint pairs (adcme_mpi/wrappers/collectives.py): Sum <-> Bcast,
// Gather <-> Scatter, Allreduce <-> Allreduce.
#include <cstring>

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

ROOTED_COLLECTIVE("MPISum", "sum: T", SameShapeAsFirstInput,
                  "Sum of `a` over ranks on `root`; zeros on the other ranks.");
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
    .Attr("comm: int")
    .Attr("grad_comm: int")
    .SetIsStateful()
    .SetShapeFn(WithToken<SameShapeAsFirstInput>)
    .Doc("Sum of `a` over ranks, on every rank.");

// ---- kernels ----

void ZeroFill(Tensor* t) {
  if (t->TotalBytes() > 0) std::memset(DataOf(*t), 0, t->TotalBytes());
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
                                Carried* carried = nullptr) const {
    return CheckSameAcrossRanks(site, kind_, "a", *a.tensor, root, carried);
  }
  virtual absl::Status RunRooted(OpKernelContext* ctx, const CallSite& site, int root,
                                 const Operand& a) = 0;

 private:
  const OpKind kind_;
};

class SumKernel : public RootedKernel {
 public:
  explicit SumKernel(OpKernelConstruction* c) : RootedKernel(c, OpKind::kMPISum) {}
  absl::Status RunRooted(OpKernelContext* ctx, const CallSite& site, int root,
                         const Operand& a) override {
    Tensor* out = nullptr;
    const bool is_root = site.rank == root;
    // Root: reduce in place into the input's buffer when TF can hand it over.
    TF_RETURN_IF_ERROR(ctx->forward_input_or_allocate_output({0}, 0, a.tensor->shape(), &out));
    Carried carried;
    carried.input = a.tensor;
    carried.sum = true;
    carried.output = DataOf(*out);
    TF_RETURN_IF_ERROR(CheckAcrossRanks(site, root, a, &carried));
    if (!carried.done) {
      const bool in_place = DataOf(*out) == DataOf(*a.tensor);
      RequestSet requests(site);
      requests.Keep(*a.tensor);
      requests.Keep(*out);
      TF_RETURN_IF_ERROR(
          requests.Posted(MPI_Ireduce(is_root && in_place ? MPI_IN_PLACE : DataOf(*a.tensor),
                                      is_root ? DataOf(*out) : nullptr, a.count, a.type, MPI_SUM,
                                      root, site.comm, requests.Next()),
                          "MPI_Ireduce"));
      TF_RETURN_IF_ERROR(requests.Wait("every rank to join the reduction"));
    }
    if (!is_root) ZeroFill(out);
    return absl::OkStatus();
  }
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
      TF_RETURN_IF_ERROR(ctx->forward_input_or_allocate_output({0}, 0, a.tensor->shape(), &out));
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
    TF_RETURN_IF_ERROR(ctx->allocate_output(0, shape, &out));
    const bool is_root = site.rank == root;
    RequestSet requests(site);
    requests.Keep(*a.tensor);
    requests.Keep(*out);
    TF_RETURN_IF_ERROR(requests.Posted(
        MPI_Igather(DataOf(*a.tensor), a.count, a.type, is_root ? DataOf(*out) : nullptr, a.count,
                    a.type, root, site.comm, requests.Next()),
        "MPI_Igather"));
    TF_RETURN_IF_ERROR(requests.Wait("every rank to join the gather"));
    if (!is_root) ZeroFill(out);
    return absl::OkStatus();
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
    TF_RETURN_IF_ERROR(ctx->allocate_output(0, shape, &out));
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
  using MpiKernel::MpiKernel;
  absl::Status Run(OpKernelContext* ctx, const CallSite& site) override {
    Operand a;
    TF_RETURN_IF_ERROR(PrepareOperand(site, ctx->input(0), &a));
    Tensor* out = nullptr;
    // Reuse the input buffer when TF lets us (it is not needed elsewhere).
    TF_RETURN_IF_ERROR(ctx->forward_input_or_allocate_output({0}, 0, a.tensor->shape(), &out));
    Carried carried;
    carried.input = a.tensor;
    carried.sum = true;
    carried.output = DataOf(*out);
    TF_RETURN_IF_ERROR(
        CheckSameAcrossRanks(site, OpKind::kMPIAllreduce, "a", *a.tensor, -1, &carried));
    if (carried.done) return absl::OkStatus();
    const bool in_place = DataOf(*out) == DataOf(*a.tensor);
    RequestSet requests(site);
    requests.Keep(*a.tensor);
    requests.Keep(*out);
    TF_RETURN_IF_ERROR(
        requests.Posted(MPI_Iallreduce(in_place ? MPI_IN_PLACE : DataOf(*a.tensor), DataOf(*out),
                                       a.count, a.type, MPI_SUM, site.comm, requests.Next()),
                        "MPI_Iallreduce"));
    return requests.Wait("every rank to join the allreduce");
  }
};

REGISTER_KERNEL_BUILDER(ADCME_MPI_CPU_KERNEL("MPISum").HostMemory("root"), SumKernel);
REGISTER_KERNEL_BUILDER(ADCME_MPI_CPU_KERNEL("MPIBcast").HostMemory("root"), BcastKernel);
REGISTER_KERNEL_BUILDER(ADCME_MPI_CPU_KERNEL("MPIGather").HostMemory("root"), GatherKernel);
REGISTER_KERNEL_BUILDER(ADCME_MPI_CPU_KERNEL("MPIScatter").HostMemory("root"), ScatterKernel);
REGISTER_KERNEL_BUILDER(ADCME_MPI_CPU_KERNEL("MPIAllreduce"), AllreduceKernel);

}  // namespace
}  // namespace adcme_mpi
