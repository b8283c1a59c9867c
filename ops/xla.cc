// XLA lowerings of the MPI ops (issue 32): under tf.function(jit_compile=True)
// every op of the op table's `xla` column (all but the sparse ops) lowers to
// one side-effecting typed-FFI custom call on the Host platform,
// "adcme_mpi_op", whose handler runs the op's own TF kernel: the same
// local checks, cross-rank check in the same sequence as plain ops, watchdog
// waits and messages naming op and rank, on the same MPI thread when
// ADCME_MPI_THREAD=1. A library of its own (libadcme_mpi_xla.so, CMake option
// ADCME_MPI_XLA), loaded after the op library by adcme_mpi/_loader.py: it
// links libtensorflow_cc.so.2, where the XLA classes live.
//
// How: when XLA compiles an op, LoweredMpiOp makes the op's CPU kernel from
// the node's own NodeDef (CreateOpKernel) and files it in a registry that
// lives as long as the process; the custom call carries the entry's number
// as its first operand, then the op's inputs. The handler copies XLA's
// input buffers into owned tensors (the watchdog keeps an abandoned
// request's buffers alive, which XLA's are not), runs the kernel on an
// OpKernelContext of its own and copies the outputs out.
//
// Order: the ordering token (a float scalar) is the op's last input and
// output, so XLA keeps the calls in program order, and `has_side_effect`
// keeps it from dropping or merging them. Plain and compiled calls share one
// sequence: they run the same kernels on the same communicators.
//
// Shapes: XLA needs every output's shape when it compiles. OutputShape
// derives it from the input shapes, the communicator's size and rank and,
// for mpi_reduce_scatter, its compile-time constant counts. Where other
// ranks' inputs decide it (mpi_allgather with first dimensions that differ
// across ranks, mpi_alltoall with splits that receive another number of
// slices than they send), the compiled shape assumes they agree, and the
// handler fails with a message naming op and rank when they do not.
//
// XLA:CPU accepts only the typed FFI (API_VERSION_STATUS_RETURNING crashes
// it: tools/xla_prototype/NOTES.md).
#include <algorithm>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core.h"
#include "family.h"
#include "kernel.h"
#include "tensorflow/compiler/tf2xla/type_util.h"
#include "tensorflow/compiler/tf2xla/xla_op_kernel.h"
#include "tensorflow/compiler/tf2xla/xla_op_registry.h"
#include "tensorflow/core/framework/allocator.h"
#include "tensorflow/core/framework/device_base.h"
#include "tensorflow/core/framework/node_def_util.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/public/version.h"
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

// The device the kernels see when a custom call runs them: host memory
// from TensorFlow's CPU allocator, which is all an MPI kernel asks of it.
class HostDevice : public tensorflow::DeviceBase {
 public:
  HostDevice() : DeviceBase(tensorflow::Env::Default()) {}
  tensorflow::Allocator* GetAllocator(tensorflow::AllocatorAttributes) override {
    return tensorflow::cpu_allocator();
  }
};

HostDevice* Host() {
  static HostDevice* device = new HostDevice();  // leaked on purpose: kernels outlive main
  return device;
}

// One compiled call site: the op's CPU kernel and the dtypes of its inputs.
struct Lowered {
  std::unique_ptr<tensorflow::OpKernel> kernel;
  std::vector<DataType> input_types;
  std::string op;  // the op's name in messages ("mpi_allgather (rank 1 of 2)")
  MPI_Comm comm = MPI_COMM_NULL;
  // whether other ranks' inputs decide the output's shape (OutputShape)
  bool shape_from_peers = false;
};

// Entries live as long as the process (a compiled function may run until
// the end); a deque keeps their addresses fixed as it grows.
std::mutex registry_mu;
std::deque<Lowered>& Registry() {
  static auto* registry = new std::deque<Lowered>();
  return *registry;
}

int64_t Register(Lowered entry) {
  std::lock_guard<std::mutex> lock(registry_mu);
  Registry().push_back(std::move(entry));
  return static_cast<int64_t>(Registry().size()) - 1;
}

Lowered* Find(int64_t id) {
  std::lock_guard<std::mutex> lock(registry_mu);
  if (id < 0 || id >= static_cast<int64_t>(Registry().size())) return nullptr;
  return &Registry()[id];
}

ffi::Error AsFfiError(const absl::Status& status) {
  if (status.ok()) return ffi::Error::Success();
  return ffi::Error(static_cast<XLA_FFI_Error_Code>(status.code()), std::string(status.message()));
}

std::string ShapeText(const std::vector<int64_t>& dims) {
  return absl::StrCat("[", absl::StrJoin(dims, ", "), "]");
}

// Runs entry `id`'s kernel on the custom call's remaining operands (the
// op's inputs, token last) and writes its outputs to the results.
ffi::Error RunLowered(ffi::Buffer<ffi::S64> id, ffi::RemainingArgs args, ffi::RemainingRets rets) {
  Lowered* entry = Find(id.typed_data()[0]);
  if (entry == nullptr || args.size() != entry->input_types.size())
    return ffi::Error::Internal("adcme_mpi: an XLA custom call without its compiled op");
  tensorflow::OpKernel* kernel = entry->kernel.get();
  std::vector<Tensor> inputs(args.size());
  std::vector<tensorflow::TensorValue> values(args.size());
  for (size_t i = 0; i < args.size(); ++i) {
    auto buffer = args.get<ffi::AnyBuffer>(i);
    if (!buffer.has_value()) return buffer.error();
    TensorShape shape;
    for (int64_t d : buffer->dimensions()) shape.AddDim(d);
    inputs[i] = Tensor(entry->input_types[i], shape);
    if (inputs[i].TotalBytes() > 0)
      std::memcpy(DataOf(inputs[i]), buffer->untyped_data(), inputs[i].TotalBytes());
    values[i] = tensorflow::TensorValue(&inputs[i]);
  }
  const int outputs = kernel->num_outputs();
  std::vector<tensorflow::AllocatorAttributes> output_attrs(outputs), input_attrs(args.size());
  tensorflow::OpKernelContext::Params params;
  params.device = Host();
  params.op_kernel = kernel;
  params.inputs = values;
  params.input_alloc_attrs = input_attrs;
  params.output_attr_array = output_attrs.data();
  params.frame_iter = tensorflow::FrameAndIter(0, 0);
  tensorflow::OpKernelContext ctx(&params, outputs);
  // (with ADCME_MPI_THREAD=1, Compute hands the work to the MPI thread and waits)
  kernel->Compute(&ctx);
  if (!ctx.status().ok()) return AsFfiError(ctx.status());
  if (static_cast<int>(rets.size()) != outputs)
    return ffi::Error::Internal("adcme_mpi: an XLA custom call with the wrong number of results");
  std::vector<ffi::Result<ffi::AnyBuffer>> results;
  std::string mismatch;  // the first output whose shape is not the compiled one
  for (int j = 0; j < outputs; ++j) {
    auto result = rets.get<ffi::AnyBuffer>(j);
    if (!result.has_value()) return result.error();
    results.push_back(*result);
    const auto dims = (*result)->dimensions();
    const std::vector<int64_t> compiled(dims.begin(), dims.end());
    const auto sizes = ctx.mutable_output(j)->shape().dim_sizes();
    const std::vector<int64_t> got(sizes.begin(), sizes.end());
    if (compiled != got && mismatch.empty())
      mismatch = absl::StrCat("here it was compiled as ", ShapeText(compiled),
                              " and the ranks' inputs make ", ShapeText(got));
  }
  // Where other ranks decide the shape, a rank whose guess happened to be
  // right must fail too: every rank learns whether any rank's was wrong.
  int wrong_somewhere = !mismatch.empty();
  if (entry->shape_from_peers)
    MPI_Allreduce(MPI_IN_PLACE, &wrong_somewhere, 1, MPI_INT, MPI_MAX, entry->comm);
  if (wrong_somewhere)
    return ffi::Error::InvalidArgument(absl::StrCat(
        entry->op,
        ": inside tf.function(jit_compile=True) its output shape is fixed when XLA "
        "compiles, from this rank's input, assuming every rank's agrees; they do not (",
        mismatch.empty() ? "another rank's compiled shape differs from what the inputs make"
                         : mismatch,
        "); call it outside jit_compile=True"));
  for (int j = 0; j < outputs; ++j) {
    const Tensor* out = ctx.mutable_output(j);
    if (out->TotalBytes() > 0)
      std::memcpy(results[j]->untyped_data(), DataOf(*out), out->TotalBytes());
  }
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER(
    kRunLowered, RunLowered,
    ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::S64>>().RemainingArgs().RemainingRets());
XLA_FFI_REGISTER_HANDLER(xla::ffi::GetXlaFfiApi(), "adcme_mpi_op", "Host", kRunLowered);

// The compile-time shape of output `index` (not the token) of `op_type`,
// from the input shapes (`in`), the communicator's size and rank and the
// node's attrs (`def`); constant inputs come from `ctx`. Shapes a kernel would reject
// are passed through as they are: the kernel fails at run time with its own
// message, on every rank.
absl::Status OutputShape(tensorflow::XlaOpKernelContext* ctx, const tensorflow::NodeDef& def,
                         const std::string& op_type, int index,
                         const std::vector<std::vector<int64_t>>& in, int size, int rank,
                         std::vector<int64_t>* out) {
  const std::vector<int64_t>& a = in[0];
  *out = a;
  if (op_type == "MPIGather" || op_type == "MPIAllgather") {
    if (out->empty()) {
      out->push_back(size);  // a scalar gathers to one value per rank
    } else {
      (*out)[0] *= size;
    }
  } else if (op_type == "MPIScatter") {
    if (!out->empty()) (*out)[0] /= size;
  } else if (op_type == "MPIReduceScatter") {
    std::vector<int64_t> counts;
    TF_RETURN_IF_ERROR(ctx->ConstantInputAsIntVector(1, &counts));
    // (the kernel's three forms: none, equal slices; one, this rank's own
    // length; one per rank, every rank's)
    if (!out->empty()) {
      if (counts.empty()) {
        (*out)[0] /= size;
      } else if (counts.size() == 1) {
        (*out)[0] = counts[0];
      } else if (rank < static_cast<int>(counts.size())) {
        (*out)[0] = counts[rank];
      }
    }
  } else if (op_type == "MPIAlltoall" && index == 1) {
    *out = {size};  // the slices received from each rank
  } else if (op_type == "MPIHaloExchange" || op_type == "MPIHaloExchangeGrad") {
    int64_t width = 1;
    TF_RETURN_IF_ERROR(tensorflow::GetNodeAttr(def, "width", &width));
    const int64_t pad = op_type == "MPIHaloExchange" ? 2 * width : -2 * width;
    if (index == 1) {
      out->clear();  // the fill value's gradient
    } else {
      for (int64_t& d : *out) d = std::max<int64_t>(d + pad, 0);
    }
  } else if (op_type == "MPIIsend" || op_type == "MPIIrecv") {
    out->clear();  // the request's handle
  } else if (op_type == "MPIWait") {
    *out = in[1];  // the message's shape: its `a`
  }
  return absl::OkStatus();
}

// The lowering of every MPI op that has one.
class LoweredMpiOp : public tensorflow::XlaOpKernel {
 public:
  explicit LoweredMpiOp(tensorflow::OpKernelConstruction* c) : XlaOpKernel(c), def_(c->def()) {
    OP_REQUIRES_OK(c, c->GetAttr("comm", &comm_handle_));
    def_.clear_device();
  }

  void Compile(tensorflow::XlaOpKernelContext* ctx) override {
    const std::string& op_type = type_string();
    OP_REQUIRES_OK(ctx, MpiReady(op_type));
    // the CPU kernel this call site runs, from the node itself (its attrs)
    absl::Status made;
    Lowered entry;
    entry.kernel =
        tensorflow::CreateOpKernel(tensorflow::DEVICE_CPU, Host(), tensorflow::cpu_allocator(),
                                   def_, TF_GRAPH_DEF_VERSION, &made);
    OP_REQUIRES_OK(ctx, made);
    MPI_Comm comm = MPI_Comm_f2c(static_cast<MPI_Fint>(comm_handle_));
    int size = 1, rank = 0;
    MPI_Comm_size(comm, &size);
    MPI_Comm_rank(comm, &rank);
    bool backward = false;
    FamilyOf(comm, &backward);
    entry.op = absl::StrCat(UserFacingName(op_type, backward), " (rank ", rank, " of ", size, ")");
    entry.comm = comm;
    bool given_splits = false;  // (mpi_alltoall: splits given, or equal pieces)
    if (op_type == "MPIAlltoall")
      OP_REQUIRES_OK(ctx, tensorflow::GetNodeAttr(def_, "given_splits", &given_splits));
    entry.shape_from_peers = op_type == "MPIAllgather" || given_splits;

    xla::XlaBuilder* b = ctx->builder();
    std::vector<xla::XlaOp> operands;
    std::vector<std::vector<int64_t>> in_dims;
    for (int i = 0; i < ctx->num_inputs(); ++i) {
      auto shape = ctx->InputXlaShape(i);
      OP_REQUIRES_OK(ctx, shape.status());
      in_dims.emplace_back(shape->dimensions().begin(), shape->dimensions().end());
      entry.input_types.push_back(ctx->input_type(i));
      operands.push_back(ctx->Input(i));
    }
    std::vector<xla::Shape> results;
    for (int j = 0; j < ctx->num_outputs(); ++j) {
      std::vector<int64_t> dims;  // the token: a scalar
      if (j + 1 < ctx->num_outputs())
        OP_REQUIRES_OK(ctx, OutputShape(ctx, def_, op_type, j, in_dims, size, rank, &dims));
      xla::PrimitiveType type;
      OP_REQUIRES_OK(ctx,
                     tensorflow::DataTypeToPrimitiveType(ctx->expected_output_dtype(j), &type));
      results.push_back(xla::ShapeUtil::MakeShape(type, dims));
    }
    const int64_t id = Register(std::move(entry));
    operands.insert(operands.begin(), xla::ConstantR0<int64_t>(b, id));
    xla::XlaOp call = xla::CustomCall(
        b, "adcme_mpi_op", operands, xla::ShapeUtil::MakeTupleShape(results), /*opaque=*/"",
        /*has_side_effect=*/true, /*output_operand_aliasing=*/{}, /*literal=*/nullptr,
        xla::CustomCallSchedule::SCHEDULE_NONE, xla::CustomCallApiVersion::API_VERSION_TYPED_FFI);
    for (int j = 0; j < ctx->num_outputs(); ++j) ctx->SetOutput(j, xla::GetTupleElement(call, j));
  }

 private:
  tensorflow::NodeDef def_;
  int64_t comm_handle_ = 0;
};

// One line per op of the op table's `xla` column (tests/unit/test_op_table.py
// checks that the two lists agree). Not the sparse ops, whose kernels hold
// PETSc state across runs (not tried here; their rows say so).
REGISTER_XLA_OP(Name("MPISum").Device(tensorflow::DEVICE_CPU_XLA_JIT), LoweredMpiOp);
REGISTER_XLA_OP(Name("MPIAllreduce").Device(tensorflow::DEVICE_CPU_XLA_JIT), LoweredMpiOp);
REGISTER_XLA_OP(Name("MPIBcast").Device(tensorflow::DEVICE_CPU_XLA_JIT), LoweredMpiOp);
REGISTER_XLA_OP(Name("MPIGather").Device(tensorflow::DEVICE_CPU_XLA_JIT), LoweredMpiOp);
REGISTER_XLA_OP(Name("MPIScatter").Device(tensorflow::DEVICE_CPU_XLA_JIT), LoweredMpiOp);
REGISTER_XLA_OP(Name("MPIAllgather").Device(tensorflow::DEVICE_CPU_XLA_JIT), LoweredMpiOp);
REGISTER_XLA_OP(Name("MPIReduceScatter")
                    .Device(tensorflow::DEVICE_CPU_XLA_JIT)
                    .CompileTimeConstantInput("counts"),
                LoweredMpiOp);
REGISTER_XLA_OP(Name("MPIScan").Device(tensorflow::DEVICE_CPU_XLA_JIT), LoweredMpiOp);
REGISTER_XLA_OP(Name("MPIAlltoall").Device(tensorflow::DEVICE_CPU_XLA_JIT), LoweredMpiOp);
REGISTER_XLA_OP(Name("MPIHaloExchange").Device(tensorflow::DEVICE_CPU_XLA_JIT), LoweredMpiOp);
REGISTER_XLA_OP(Name("MPIHaloExchangeGrad").Device(tensorflow::DEVICE_CPU_XLA_JIT), LoweredMpiOp);
REGISTER_XLA_OP(Name("MPISend").Device(tensorflow::DEVICE_CPU_XLA_JIT), LoweredMpiOp);
REGISTER_XLA_OP(Name("MPIRecv").Device(tensorflow::DEVICE_CPU_XLA_JIT), LoweredMpiOp);
REGISTER_XLA_OP(Name("MPIExchange").Device(tensorflow::DEVICE_CPU_XLA_JIT), LoweredMpiOp);
REGISTER_XLA_OP(Name("MPIIsend").Device(tensorflow::DEVICE_CPU_XLA_JIT), LoweredMpiOp);
REGISTER_XLA_OP(Name("MPIIrecv").Device(tensorflow::DEVICE_CPU_XLA_JIT), LoweredMpiOp);
REGISTER_XLA_OP(Name("MPIWait").Device(tensorflow::DEVICE_CPU_XLA_JIT), LoweredMpiOp);

}  // namespace
}  // namespace adcme_mpi
