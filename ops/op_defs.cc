// Op interfaces and shape functions. Kernels live in *_kernels.cc.
//
// Every op is stateful (it talks to other processes) so TensorFlow never
// folds, prunes as duplicate, or reorders it inside tf.function.
// `comm` is the Fortran handle (MPI_Comm_c2f) of the communicator to use.
#include <mpi.h>

#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace adcme_mpi {
namespace {

using tensorflow::shape_inference::DimensionHandle;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

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

absl::Status ScalarInput(InferenceContext* c, int index) {
  ShapeHandle unused;
  return c->WithRank(c->input(index), 0, &unused);
}

absl::Status SameShapeAsFirstInput(InferenceContext* c) {
  for (int i = 1; i < c->num_inputs(); ++i) TF_RETURN_IF_ERROR(ScalarInput(c, i));
  c->set_output(0, c->input(0));
  return absl::OkStatus();
}

// MPIGather: (d0, ...) -> (size * d0, ...); a scalar gathers into (size,).
absl::Status GatherShape(InferenceContext* c) {
  TF_RETURN_IF_ERROR(ScalarInput(c, 1));
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
  TF_RETURN_IF_ERROR(ScalarInput(c, 1));
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

absl::Status HaloShape(InferenceContext* c) {
  ShapeHandle u;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &u));
  TF_RETURN_IF_ERROR(ScalarInput(c, 1));
  TF_RETURN_IF_ERROR(ScalarInput(c, 2));
  int64_t width = 1;
  TF_RETURN_IF_ERROR(c->GetAttr("width", &width));
  DimensionHandle rows, cols;
  TF_RETURN_IF_ERROR(c->Add(c->Dim(u, 0), 2 * width, &rows));
  TF_RETURN_IF_ERROR(c->Add(c->Dim(u, 1), 2 * width, &cols));
  c->set_output(0, c->Matrix(rows, cols));
  return absl::OkStatus();
}

absl::Status HaloGradShape(InferenceContext* c) {
  ShapeHandle dy;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &dy));
  TF_RETURN_IF_ERROR(ScalarInput(c, 1));
  int64_t width = 1;
  TF_RETURN_IF_ERROR(c->GetAttr("width", &width));
  DimensionHandle rows, cols;
  TF_RETURN_IF_ERROR(c->Subtract(c->Dim(dy, 0), 2 * width, &rows));
  TF_RETURN_IF_ERROR(c->Subtract(c->Dim(dy, 1), 2 * width, &cols));
  c->set_output(0, c->Matrix(rows, cols));
  c->set_output(1, c->Scalar());
  return absl::OkStatus();
}

}  // namespace

#define ADCME_MPI_DATA_TYPES "T: {float, double, int32, int64}"

REGISTER_OP("MPISum")
    .Input("a: T").Input("root: int32").Output("sum: T")
    .Attr(ADCME_MPI_DATA_TYPES).Attr("comm: int")
    .SetIsStateful().SetShapeFn(SameShapeAsFirstInput)
    .Doc("Sum of `a` over ranks on `root`; zeros on the other ranks.");

REGISTER_OP("MPIAllreduce")
    .Input("a: T").Output("sum: T")
    .Attr(ADCME_MPI_DATA_TYPES).Attr("comm: int")
    .SetIsStateful().SetShapeFn(SameShapeAsFirstInput)
    .Doc("Sum of `a` over ranks, on every rank.");

REGISTER_OP("MPIBcast")
    .Input("a: T").Input("root: int32").Output("b: T")
    .Attr(ADCME_MPI_DATA_TYPES).Attr("comm: int")
    .SetIsStateful().SetShapeFn(SameShapeAsFirstInput)
    .Doc("`root`'s `a` on every rank.");

REGISTER_OP("MPIGather")
    .Input("a: T").Input("root: int32").Output("gathered: T")
    .Attr(ADCME_MPI_DATA_TYPES).Attr("comm: int")
    .SetIsStateful().SetShapeFn(GatherShape)
    .Doc("Ranks' `a` concatenated along axis 0 on `root`; zeros elsewhere.");

REGISTER_OP("MPIScatter")
    .Input("a: T").Input("root: int32").Output("part: T")
    .Attr(ADCME_MPI_DATA_TYPES).Attr("comm: int")
    .SetIsStateful().SetShapeFn(ScatterShape)
    .Doc("Rank r gets the r-th of `size` equal slices (axis 0) of `root`'s `a`.");

REGISTER_OP("MPISend")
    .Input("a: T").Input("dest: int32").Input("tag: int32").Output("out: T")
    .Attr(ADCME_MPI_DATA_TYPES).Attr("comm: int")
    .SetIsStateful().SetShapeFn(SameShapeAsFirstInput)
    .Doc("Sends `a` to `dest`; returns `a`.");

REGISTER_OP("MPIRecv")
    .Input("a: T").Input("src: int32").Input("tag: int32").Output("received: T")
    .Attr(ADCME_MPI_DATA_TYPES).Attr("comm: int")
    .SetIsStateful().SetShapeFn(SameShapeAsFirstInput)
    .Doc("Receives from `src` a tensor shaped like the template `a`.");

REGISTER_OP("MPIHaloExchange")
    .Input("u: T").Input("fill_value: T").Input("tag: int32").Output("padded: T")
    .Attr(ADCME_MPI_DATA_TYPES).Attr("m: int >= 1").Attr("n: int >= 1")
    .Attr("width: int >= 1").Attr("comm: int")
    .SetIsStateful().SetShapeFn(HaloShape)
    .Doc("`u` padded by `width` ghost cells from the neighbours on an m x n rank grid.");

REGISTER_OP("MPIHaloExchangeGrad")
    .Input("grad_padded: T").Input("tag: int32")
    .Output("grad_u: T").Output("grad_fill_value: T")
    .Attr("T: {float, double}").Attr("m: int >= 1").Attr("n: int >= 1")
    .Attr("width: int >= 1").Attr("comm: int")
    .SetIsStateful().SetShapeFn(HaloGradShape)
    .Doc("Adjoint of MPIHaloExchange: ghost-cell gradients return to their owners.");

}  // namespace adcme_mpi
