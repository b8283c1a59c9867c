// Settings, the op table's names and kinds, CallSite and the argument helpers.
#include "core.h"

#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/substitute.h"
#include "c_api.h"

namespace adcme_mpi {
namespace {
Settings configured;  // written once by adcme_mpi_configure, before any kernel runs
}  // namespace

const Settings& GetSettings() { return configured; }

std::string UserFacingName(const std::string& op_type, bool backward) {
  // op type -> (its name on a forward pass, its name in a backward pass)
  static const auto* names = new std::map<std::string, std::pair<std::string, std::string>>{
#define ADCME_MPI_OP_NAMES(type, name, backward_name, kind) {#type, {name, backward_name}},
      ADCME_MPI_OP_TABLE(ADCME_MPI_OP_NAMES)
#undef ADCME_MPI_OP_NAMES
  };
  auto it = names->find(op_type);
  if (it == names->end()) return op_type;
  return backward ? it->second.second : it->second.first;
}

const char* OpTypeOfKind(int64_t kind) {
#define ADCME_MPI_OP_TYPE(type, name, backward_name, k) \
  if (k != 0 && kind == k) return #type;
  ADCME_MPI_OP_TABLE(ADCME_MPI_OP_TYPE)
#undef ADCME_MPI_OP_TYPE
  return "";
}

OpKind KindOfOpType(const std::string& op_type) {
#define ADCME_MPI_KIND_OF(type, name, backward_name, k) \
  if (op_type == #type) return static_cast<OpKind>(k);
  ADCME_MPI_OP_TABLE(ADCME_MPI_KIND_OF)
#undef ADCME_MPI_KIND_OF
  return OpKind::kNone;
}

BufferPolicy BufferPolicyOfOpType(const std::string& op_type) {
#define ADCME_MPI_BUFFER_OF(type, policy) \
  if (op_type == #type) return BufferPolicy::policy;
  ADCME_MPI_BUFFER_TABLE(ADCME_MPI_BUFFER_OF)
#undef ADCME_MPI_BUFFER_OF
  return BufferPolicy::kNew;
}

std::string CallSite::Describe() const {
  return absl::StrCat(op, " (rank ", rank, " of ", size, ")");
}

absl::Status CallSite::Check(int rc, const char* mpi_function) const {
  if (rc == MPI_SUCCESS) return absl::OkStatus();
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS) len = 0;
  return absl::InternalError(
      absl::StrCat(Describe(), " | ", mpi_function, " failed: ", std::string(text, len)));
}

absl::Status CallSite::InvalidArgument(const std::string& what) const {
  return absl::InvalidArgumentError(absl::StrCat(Describe(), ": ", what));
}

CallSite SiteOn(const std::string& op, MPI_Comm comm) {
  CallSite site;
  site.op = op;
  site.comm = comm;
  MPI_Comm_rank(comm, &site.rank);
  MPI_Comm_size(comm, &site.size);
  return site;
}

std::string ShapeString(DataType dtype, const TensorShape& shape) {
  return absl::StrCat(tensorflow::DataTypeString(dtype), shape.DebugString());
}

absl::Status CountOf(const CallSite& site, const char* arg, int64_t elements, int* count) {
  if (elements > INT32_MAX)
    return site.InvalidArgument(absl::StrCat("argument '", arg, "' has ", elements,
                                             " elements; at most 2^31-1 per message"));
  *count = static_cast<int>(elements);
  return absl::OkStatus();
}

absl::Status DatatypeArg(const CallSite& site, const char* arg, const Tensor& t,
                         MPI_Datatype* out) {
  switch (t.dtype()) {
    case tensorflow::DT_FLOAT: *out = MPI_FLOAT; return absl::OkStatus();
    case tensorflow::DT_DOUBLE: *out = MPI_DOUBLE; return absl::OkStatus();
    case tensorflow::DT_INT32: *out = MPI_INT32_T; return absl::OkStatus();
    case tensorflow::DT_INT64: *out = MPI_INT64_T; return absl::OkStatus();
    // 2-byte floats move as raw 2-byte words (MPI has no float16); the
    // reducing kernels widen them to float32 first (collective.cc, Widened)
    case tensorflow::DT_HALF:
    case tensorflow::DT_BFLOAT16: *out = MPI_UINT16_T; return absl::OkStatus();
    // MPI_SUM and MPI_PROD are defined on these; MPI_MAX and MPI_MIN are not
    case tensorflow::DT_COMPLEX64: *out = MPI_C_FLOAT_COMPLEX; return absl::OkStatus();
    case tensorflow::DT_COMPLEX128: *out = MPI_C_DOUBLE_COMPLEX; return absl::OkStatus();
    default:
      return site.InvalidArgument(absl::Substitute(
          messages::kDtype, arg, tensorflow::DataTypeString(t.dtype()), messages::kDataDtypes));
  }
}

int TagUpperBound(MPI_Comm comm) {
  // MPI_TAG_UB is only guaranteed on MPI_COMM_WORLD (Open MPI leaves it off dups).
  for (MPI_Comm c : {comm, MPI_COMM_WORLD}) {
    int* value = nullptr;
    int flag = 0;
    if (MPI_Comm_get_attr(c, MPI_TAG_UB, &value, &flag) == MPI_SUCCESS && flag && value)
      return *value;
  }
  return 32767;  // the smallest upper bound the standard allows
}

absl::Status ScalarIntArg(OpKernelContext* ctx, int index, const char* name, int64_t lo, int64_t hi,
                          const CallSite& site, int* out) {
  const Tensor& t = ctx->input(index);
  if (t.dims() != 0)
    return site.InvalidArgument(absl::StrCat("argument '", name, "' must be a scalar, got shape ",
                                             t.shape().DebugString()));
  const int64_t v = t.scalar<int32_t>()();  // the op interfaces declare int32
  if (v < lo || v > hi)
    return site.InvalidArgument(absl::Substitute(messages::kOutOfRange, name, v, lo, hi));
  *out = static_cast<int>(v);
  return absl::OkStatus();
}

}  // namespace adcme_mpi

ADCME_MPI_C_API void adcme_mpi_configure(int check, int mpi_thread, double timeout,
                                         int oversubscribed) {
  adcme_mpi::Settings& s = adcme_mpi::configured;
  s.check = check != 0;
  s.mpi_thread = mpi_thread != 0;
  s.timeout = timeout;
  s.oversubscribed = oversubscribed != 0;
}

ADCME_MPI_C_API int adcme_mpi_tag_upper_bound(int64_t comm_handle) {
  return adcme_mpi::TagUpperBound(MPI_Comm_f2c(static_cast<MPI_Fint>(comm_handle)));
}
