// XLA lowerings of the MPI ops (issue 32): under tf.function(jit_compile=True)
// an op lowers to a side-effecting typed-FFI custom call on the Host
// platform, whose handler runs the op's TF kernel core on XLA's buffers
// (buffers.h): the same cross-rank check in the same sequence as plain ops,
// the same watchdog waits and messages. A library of its own
// (libadcme_mpi_xla.so, CMake option ADCME_MPI_XLA), loaded after the op
// library by adcme_mpi/_loader.py: it links libtensorflow_cc.so.2, where
// the XLA classes live. Lowered so far: MPIAllreduce (op_table.py's
// `xla` column lists the lowered ops).
//
// The ordering token (a float scalar) is operand and result of the custom
// call, so XLA keeps the calls in program order; `has_side_effect` keeps it
// from dropping or merging them. The communicator and the reduction travel
// as s64 scalar constant operands. XLA:CPU accepts only the typed FFI
// (API_VERSION_STATUS_RETURNING crashes it: tools/xla_prototype/NOTES.md).
#include <string>

#include "buffers.h"
#include "tensorflow/compiler/tf2xla/xla_op_kernel.h"
#include "tensorflow/compiler/tf2xla/xla_op_registry.h"
#include "xla/ffi/api/ffi.h"
#include "xla/hlo/builder/xla_builder.h"
#include "xla/shape_util.h"

namespace xla::ffi {
// Exported by libtensorflow_cc.so.2; its own header (xla/ffi/ffi_api.h)
// needs MLIR headers that TensorFlow does not ship.
const XLA_FFI_Api* GetXlaFfiApi();
}  // namespace xla::ffi

namespace adcme_mpi {
namespace {

namespace ffi = xla::ffi;

// The TF dtype of an XLA buffer (the op's T), or DT_INVALID.
DataType TfType(ffi::DataType t) {
  switch (t) {
    case ffi::DataType::F32: return tensorflow::DT_FLOAT;
    case ffi::DataType::F64: return tensorflow::DT_DOUBLE;
    case ffi::DataType::S32: return tensorflow::DT_INT32;
    case ffi::DataType::S64: return tensorflow::DT_INT64;
    case ffi::DataType::F16: return tensorflow::DT_HALF;
    case ffi::DataType::BF16: return tensorflow::DT_BFLOAT16;
    case ffi::DataType::C64: return tensorflow::DT_COMPLEX64;
    case ffi::DataType::C128: return tensorflow::DT_COMPLEX128;
    default: return tensorflow::DT_INVALID;
  }
}

// The status as the handler's error: same code, same message.
ffi::Error AsFfiError(const absl::Status& status) {
  if (status.ok()) return ffi::Error::Success();
  return ffi::Error(static_cast<XLA_FFI_Error_Code>(status.code()), std::string(status.message()));
}

ffi::Error AllreduceHandler(ffi::AnyBuffer a, ffi::Buffer<ffi::F32> token,
                            ffi::Buffer<ffi::S64> comm, ffi::Buffer<ffi::S64> reduction,
                            ffi::Result<ffi::AnyBuffer> out,
                            ffi::Result<ffi::Buffer<ffi::F32>> token_out) {
  const DataType dtype = TfType(a.element_type());
  if (dtype == tensorflow::DT_INVALID)
    return ffi::Error::InvalidArgument("mpi_allreduce: unsupported XLA element type");
  TensorShape shape;
  for (int64_t d : a.dimensions()) shape.AddDim(d);
  const absl::Status status =
      AllreduceOnBuffers(comm.typed_data()[0], reduction.typed_data()[0], dtype, shape,
                         a.untyped_data(), out->untyped_data());
  token_out->typed_data()[0] = 0.0f;
  return AsFfiError(status);
}

XLA_FFI_DEFINE_HANDLER(kAllreduce, AllreduceHandler,
                       ffi::Ffi::Bind()
                           .Arg<ffi::AnyBuffer>()
                           .Arg<ffi::Buffer<ffi::F32>>()
                           .Arg<ffi::Buffer<ffi::S64>>()
                           .Arg<ffi::Buffer<ffi::S64>>()
                           .Ret<ffi::AnyBuffer>()
                           .Ret<ffi::Buffer<ffi::F32>>());
XLA_FFI_REGISTER_HANDLER(xla::ffi::GetXlaFfiApi(), "adcme_mpi_allreduce", "Host", kAllreduce);

constexpr const char* kReductionNames[] = {"sum", "max", "min", "prod"};

class AllreduceXla : public tensorflow::XlaOpKernel {
 public:
  explicit AllreduceXla(tensorflow::OpKernelConstruction* c) : XlaOpKernel(c) {
    std::string name;
    OP_REQUIRES_OK(c, c->GetAttr("comm", &comm_));
    OP_REQUIRES_OK(c, c->GetAttr("reduction", &name));
    for (int64_t i = 0; i < 4; ++i)
      if (name == kReductionNames[i]) reduction_ = i;
  }
  void Compile(tensorflow::XlaOpKernelContext* ctx) override {
    auto a_shape = ctx->InputXlaShape(0);
    OP_REQUIRES_OK(ctx, a_shape.status());
    auto token_shape = ctx->InputXlaShape(1);
    OP_REQUIRES_OK(ctx, token_shape.status());
    xla::XlaBuilder* b = ctx->builder();
    const xla::Shape result = xla::ShapeUtil::MakeTupleShape({*a_shape, *token_shape});
    xla::XlaOp call = xla::CustomCall(
        b, "adcme_mpi_allreduce",
        {ctx->Input(0), ctx->Input(1), xla::ConstantR0<int64_t>(b, comm_),
         xla::ConstantR0<int64_t>(b, reduction_)},
        result, /*opaque=*/"", /*has_side_effect=*/true, /*output_operand_aliasing=*/{},
        /*literal=*/nullptr, xla::CustomCallSchedule::SCHEDULE_NONE,
        xla::CustomCallApiVersion::API_VERSION_TYPED_FFI);
    ctx->SetOutput(0, xla::GetTupleElement(call, 0));
    ctx->SetOutput(1, xla::GetTupleElement(call, 1));
  }

 private:
  int64_t comm_ = 0;
  int64_t reduction_ = 0;
};

REGISTER_XLA_OP(Name("MPIAllreduce").Device(tensorflow::DEVICE_CPU_XLA_JIT), AllreduceXla);

}  // namespace
}  // namespace adcme_mpi
