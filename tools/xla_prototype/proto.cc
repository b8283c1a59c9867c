// Feasibility prototype: a TF op with a CPU kernel and an XLA lowering to a
// side-effecting Host custom call (typed FFI; see NOTES.md for why not status-returning).
#include <cstring>
#include <string>
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/compiler/tf2xla/xla_op_kernel.h"
#include "tensorflow/compiler/tf2xla/xla_op_registry.h"
#include "xla/hlo/builder/xla_builder.h"
#include "xla/ffi/api/ffi.h"
namespace xla::ffi { const XLA_FFI_Api* GetXlaFfiApi(); }  // exported by libtensorflow_cc; its header needs MLIR
#include "xla/service/custom_call_target_registry.h"
#include "xla/shape_util.h"

using namespace tensorflow;

// the shared core: raw buffers
static bool proto_core(const float* in, float* out, int64_t n, std::string* err) {
  for (int64_t i = 0; i < n; ++i) {
    if (in[i] < 0) { *err = "proto (rank 0 of 1) negative input"; return false; }
    out[i] = in[i] + 1;
  }
  return true;
}

REGISTER_OP("ProtoXla").Input("a: float").Input("token: int64").Output("b: float")
    .Output("token_out: int64").SetIsStateful()
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(0)); c->set_output(1, c->input(1)); return OkStatus(); });

class ProtoXlaOp : public OpKernel {
 public:
  using OpKernel::OpKernel;
  void Compute(OpKernelContext* ctx) override {
    Tensor* out; OP_REQUIRES_OK(ctx, ctx->allocate_output(0, ctx->input(0).shape(), &out));
    std::string err;
    OP_REQUIRES(ctx, proto_core(ctx->input(0).flat<float>().data(), out->flat<float>().data(),
                          out->NumElements(), &err), errors::InvalidArgument(err));
    Tensor* t; OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({}), &t));
    t->scalar<int64_t>()() = ctx->input(1).scalar<int64_t>()() + 1;
  }
};
REGISTER_KERNEL_BUILDER(Name("ProtoXla").Device(DEVICE_CPU), ProtoXlaOp);


namespace ffi = xla::ffi;
// Typed FFI (XLA:CPU in TF 2.21 refuses API_VERSION_TYPED_FFI).
static ffi::Error ProtoImpl(ffi::AnyBuffer x, ffi::Buffer<ffi::S64> tok,
                            ffi::Result<ffi::AnyBuffer> out, ffi::Result<ffi::Buffer<ffi::S64>> tok_out) {
  std::string err;
  if (!proto_core(static_cast<const float*>(x.untyped_data()), static_cast<float*>(out->untyped_data()),
                  x.element_count(), &err))
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, err);
  tok_out->typed_data()[0] = tok.typed_data()[0] + 1;
  return ffi::Error::Success();
}
XLA_FFI_DEFINE_HANDLER(kProto, ProtoImpl,
    ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::Buffer<ffi::S64>>()
        .Ret<ffi::AnyBuffer>().Ret<ffi::Buffer<ffi::S64>>());
XLA_FFI_REGISTER_HANDLER(xla::ffi::GetXlaFfiApi(), "adcme_proto_cc", "Host", kProto);
class ProtoXlaXla : public XlaOpKernel {
 public:
  using XlaOpKernel::XlaOpKernel;
  void Compile(XlaOpKernelContext* ctx) override {
    auto shp = ctx->InputXlaShape(0).value();
    auto tshp = ctx->InputXlaShape(1).value();
    int64_t n = xla::ShapeUtil::ElementsIn(shp);
    std::string opaque(reinterpret_cast<const char*>(&n), sizeof n);
    xla::Shape outshape = xla::ShapeUtil::MakeTupleShape({shp, tshp});
    xla::XlaOp r = xla::CustomCall(ctx->builder(), "adcme_proto_cc", {ctx->Input(0), ctx->Input(1)},
        outshape, "", /*has_side_effect=*/true, {}, nullptr,
        xla::CustomCallSchedule::SCHEDULE_NONE, xla::CustomCallApiVersion::API_VERSION_TYPED_FFI);
    ctx->SetOutput(0, xla::GetTupleElement(r, 0));
    ctx->SetOutput(1, xla::GetTupleElement(r, 1));
  }
};
REGISTER_XLA_OP(Name("ProtoXla").Device(DEVICE_CPU_XLA_JIT), ProtoXlaXla);
