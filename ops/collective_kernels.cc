// Collective kernels: MPISum (reduce), MPIAllreduce, MPIBcast, MPIGather,
// MPIScatter. Their gradients are each other (see adcme_mpi/ops/*.py).
#include <cstring>

#include "absl/strings/str_cat.h"
#include "mpi_common.h"

namespace adcme_mpi {
namespace {

using tensorflow::DEVICE_CPU;

void ZeroFill(Tensor* t) {
  if (t->TotalBytes() > 0) std::memset(DataOf(*t), 0, t->TotalBytes());
}

// Everything a collective needs to know about its data argument `a`.
struct Operand {
  const Tensor* tensor = nullptr;
  MPI_Datatype type = MPI_DATATYPE_NULL;
  int count = 0;
};

absl::Status PrepareOperand(const CallSite& site, const Tensor& a, int root, Operand* op) {
  op->tensor = &a;
  absl::Status st = MpiDatatypeFor(a.dtype(), &op->type);
  if (!st.ok()) return site.InvalidArgument(absl::StrCat("argument 'a': ", st.message()));
  ADCME_MPI_RETURN_IF_ERROR(CountOf(site, "a", a.NumElements(), &op->count));
  return CheckSameAcrossRanks(site, "a", a, root);
}

absl::Status Finish(const CallSite& site, MPI_Request request, const std::string& waiting_for) {
  std::vector<MPI_Request> requests{request};
  std::vector<MPI_Status> statuses;
  return WaitAll(site, &requests, &statuses, waiting_for);
}

// A collective with a root rank (input 1).
class RootedKernel : public MpiKernel {
 public:
  using MpiKernel::MpiKernel;

 protected:
  absl::Status Run(OpKernelContext* ctx, const CallSite& site) final {
    int root = 0;
    ADCME_MPI_RETURN_IF_ERROR(ScalarIntArg(ctx, 1, "root", 0, site.size - 1, site, &root));
    Operand a;
    ADCME_MPI_RETURN_IF_ERROR(PrepareOperand(site, ctx->input(0), root, &a));
    return RunRooted(ctx, site, root, a);
  }
  virtual absl::Status RunRooted(OpKernelContext* ctx, const CallSite& site, int root,
                                 const Operand& a) = 0;
};

class SumKernel : public RootedKernel {
 public:
  using RootedKernel::RootedKernel;
  absl::Status RunRooted(OpKernelContext* ctx, const CallSite& site, int root,
                         const Operand& a) override {
    Tensor* out = nullptr;
    ADCME_MPI_RETURN_IF_ERROR(ctx->allocate_output(0, a.tensor->shape(), &out));
    const bool is_root = site.rank == root;
    MPI_Request request;
    ADCME_MPI_RETURN_IF_ERROR(site.Check(
        MPI_Ireduce(DataOf(*a.tensor), is_root ? DataOf(*out) : nullptr, a.count, a.type,
                    MPI_SUM, root, site.comm, &request),
        "MPI_Ireduce"));
    ADCME_MPI_RETURN_IF_ERROR(Finish(site, request, "every rank to join the reduction"));
    if (!is_root) ZeroFill(out);
    return absl::OkStatus();
  }
};

class BcastKernel : public RootedKernel {
 public:
  using RootedKernel::RootedKernel;
  absl::Status RunRooted(OpKernelContext* ctx, const CallSite& site, int root,
                         const Operand& a) override {
    char* buffer = nullptr;
    if (site.rank == root) {
      ctx->set_output(0, *a.tensor);  // zero copy: the root returns its own input
      buffer = DataOf(*a.tensor);     // and MPI only reads from it
    } else {
      Tensor* out = nullptr;
      ADCME_MPI_RETURN_IF_ERROR(ctx->allocate_output(0, a.tensor->shape(), &out));
      buffer = DataOf(*out);
    }
    MPI_Request request;
    ADCME_MPI_RETURN_IF_ERROR(site.Check(
        MPI_Ibcast(buffer, a.count, a.type, root, site.comm, &request), "MPI_Ibcast"));
    return Finish(site, request, absl::StrCat("root rank ", root));
  }
};

class GatherKernel : public RootedKernel {
 public:
  using RootedKernel::RootedKernel;
  absl::Status RunRooted(OpKernelContext* ctx, const CallSite& site, int root,
                         const Operand& a) override {
    TensorShape shape = a.tensor->shape();
    if (shape.dims() == 0) {
      shape.AddDim(site.size);
    } else {
      shape.set_dim(0, shape.dim_size(0) * site.size);
    }
    Tensor* out = nullptr;
    ADCME_MPI_RETURN_IF_ERROR(ctx->allocate_output(0, shape, &out));
    const bool is_root = site.rank == root;
    MPI_Request request;
    ADCME_MPI_RETURN_IF_ERROR(site.Check(
        MPI_Igather(DataOf(*a.tensor), a.count, a.type, is_root ? DataOf(*out) : nullptr,
                    a.count, a.type, root, site.comm, &request),
        "MPI_Igather"));
    ADCME_MPI_RETURN_IF_ERROR(Finish(site, request, "every rank to join the gather"));
    if (!is_root) ZeroFill(out);
    return absl::OkStatus();
  }
};

class ScatterKernel : public RootedKernel {
 public:
  using RootedKernel::RootedKernel;
  absl::Status RunRooted(OpKernelContext* ctx, const CallSite& site, int root,
                         const Operand& a) override {
    TensorShape shape = a.tensor->shape();
    if (shape.dims() == 0 || shape.dim_size(0) % site.size != 0)
      return site.InvalidArgument(absl::StrCat(
          "argument 'a' must have a first dimension divisible by the communicator size ",
          site.size, ", got shape ", shape.DebugString()));
    shape.set_dim(0, shape.dim_size(0) / site.size);
    Tensor* out = nullptr;
    ADCME_MPI_RETURN_IF_ERROR(ctx->allocate_output(0, shape, &out));
    const int part = a.count / site.size;
    MPI_Request request;
    ADCME_MPI_RETURN_IF_ERROR(site.Check(
        MPI_Iscatter(site.rank == root ? DataOf(*a.tensor) : nullptr, part, a.type,
                     DataOf(*out), part, a.type, root, site.comm, &request),
        "MPI_Iscatter"));
    return Finish(site, request, absl::StrCat("root rank ", root));
  }
};

class AllreduceKernel : public MpiKernel {
 public:
  using MpiKernel::MpiKernel;
  absl::Status Run(OpKernelContext* ctx, const CallSite& site) override {
    Operand a;
    ADCME_MPI_RETURN_IF_ERROR(PrepareOperand(site, ctx->input(0), /*root=*/-1, &a));
    Tensor* out = nullptr;
    // Reuse the input buffer when TF lets us (it is not needed elsewhere).
    ADCME_MPI_RETURN_IF_ERROR(
        ctx->forward_input_or_allocate_output({0}, 0, a.tensor->shape(), &out));
    const bool in_place = DataOf(*out) == DataOf(*a.tensor);
    MPI_Request request;
    ADCME_MPI_RETURN_IF_ERROR(site.Check(
        MPI_Iallreduce(in_place ? MPI_IN_PLACE : DataOf(*a.tensor), DataOf(*out), a.count,
                       a.type, MPI_SUM, site.comm, &request),
        "MPI_Iallreduce"));
    return Finish(site, request, "every rank to join the allreduce");
  }
};

REGISTER_KERNEL_BUILDER(Name("MPISum").Device(DEVICE_CPU).HostMemory("root"), SumKernel);
REGISTER_KERNEL_BUILDER(Name("MPIBcast").Device(DEVICE_CPU).HostMemory("root"), BcastKernel);
REGISTER_KERNEL_BUILDER(Name("MPIGather").Device(DEVICE_CPU).HostMemory("root"), GatherKernel);
REGISTER_KERNEL_BUILDER(Name("MPIScatter").Device(DEVICE_CPU).HostMemory("root"), ScatterKernel);
REGISTER_KERNEL_BUILDER(Name("MPIAllreduce").Device(DEVICE_CPU), AllreduceKernel);

}  // namespace
}  // namespace adcme_mpi
