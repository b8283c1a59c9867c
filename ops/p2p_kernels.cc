// Point-to-point kernels: MPISend and MPIRecv. The gradient of one is the
// other, on the backward communicator (adcme_mpi/ops/send.py, recv.py).
#include <vector>

#include "absl/strings/str_cat.h"
#include "mpi_common.h"

namespace adcme_mpi {
namespace {

using tensorflow::DEVICE_CPU;

// Input 1 is the peer (dest or src), input 2 the tag. Sending to oneself is an error.
class PointToPointKernel : public MpiKernel {
 public:
  PointToPointKernel(OpKernelConstruction* c, const char* peer_name)
      : MpiKernel(c), peer_name_(peer_name) {}

 protected:
  absl::Status Run(OpKernelContext* ctx, const CallSite& site) final {
    int peer = 0, tag = 0;
    ADCME_MPI_RETURN_IF_ERROR(ScalarIntArg(ctx, 1, peer_name_, 0, site.size - 1, site, &peer));
    ADCME_MPI_RETURN_IF_ERROR(
        ScalarIntArg(ctx, 2, "tag", 0, TagUpperBound(site.comm), site, &tag));
    if (peer == site.rank)
      return site.InvalidArgument(absl::StrCat("argument '", peer_name_, "' = ", peer,
                                               " is this rank; sending to oneself is an error"));
    const Tensor& a = ctx->input(0);
    MPI_Datatype type;
    absl::Status st = MpiDatatypeFor(a.dtype(), &type);
    if (!st.ok()) return site.InvalidArgument(absl::StrCat("argument 'a': ", st.message()));
    int count = 0;
    ADCME_MPI_RETURN_IF_ERROR(CountOf(site, "a", a.NumElements(), &count));
    return Transfer(ctx, site, a, type, count, peer, tag);
  }
  virtual absl::Status Transfer(OpKernelContext* ctx, const CallSite& site, const Tensor& a,
                                MPI_Datatype type, int count, int peer, int tag) = 0;

 private:
  const char* peer_name_;
};

class SendKernel : public PointToPointKernel {
 public:
  explicit SendKernel(OpKernelConstruction* c) : PointToPointKernel(c, "dest") {}
  absl::Status Transfer(OpKernelContext* ctx, const CallSite& site, const Tensor& a,
                        MPI_Datatype type, int count, int dest, int tag) override {
    ctx->set_output(0, a);  // returns its input: no copy
    MPI_Request request;
    ADCME_MPI_RETURN_IF_ERROR(site.Check(
        MPI_Isend(DataOf(a), count, type, dest, tag, site.comm, &request), "MPI_Isend"));
    std::vector<MPI_Request> requests{request};
    std::vector<MPI_Status> statuses;
    return WaitAll(site, &requests, &statuses,
                   absl::StrCat("rank ", dest, " to receive (tag ", tag, ")"));
  }
};

class RecvKernel : public PointToPointKernel {
 public:
  explicit RecvKernel(OpKernelConstruction* c) : PointToPointKernel(c, "src") {}
  absl::Status Transfer(OpKernelContext* ctx, const CallSite& site, const Tensor& a,
                        MPI_Datatype type, int count, int src, int tag) override {
    const std::string waiting_for = absl::StrCat("rank ", src, " to send (tag ", tag, ")");
    MPI_Message message;
    MPI_Status status;
    ADCME_MPI_RETURN_IF_ERROR(ProbeMessage(site, src, tag, &message, &status, waiting_for));
    int sent = 0;
    ADCME_MPI_RETURN_IF_ERROR(site.Check(MPI_Get_count(&status, type, &sent), "MPI_Get_count"));
    if (sent != count) {
      // Take the message off the wire so it cannot match a later receive.
      int bytes = 0;
      ADCME_MPI_RETURN_IF_ERROR(site.Check(MPI_Get_count(&status, MPI_BYTE, &bytes), "MPI_Get_count"));
      std::vector<char> sink(bytes > 0 ? bytes : 1);
      ADCME_MPI_RETURN_IF_ERROR(site.Check(
          MPI_Mrecv(sink.data(), bytes, MPI_BYTE, &message, MPI_STATUS_IGNORE), "MPI_Mrecv"));
      return site.InvalidArgument(absl::StrCat(
          "rank ", src, " sent ", bytes, " bytes (tag ", tag, ") but argument 'a' is ",
          ShapeString(a.dtype(), a.shape()), " (", count, " elements); "
          "send and receive must agree on dtype and size"));
    }
    Tensor* out = nullptr;
    ADCME_MPI_RETURN_IF_ERROR(ctx->allocate_output(0, a.shape(), &out));
    MPI_Request request;
    ADCME_MPI_RETURN_IF_ERROR(
        site.Check(MPI_Imrecv(DataOf(*out), count, type, &message, &request), "MPI_Imrecv"));
    std::vector<MPI_Request> requests{request};
    std::vector<MPI_Status> statuses;
    return WaitAll(site, &requests, &statuses, waiting_for);
  }
};

REGISTER_KERNEL_BUILDER(
    Name("MPISend").Device(DEVICE_CPU).HostMemory("dest").HostMemory("tag"), SendKernel);
REGISTER_KERNEL_BUILDER(
    Name("MPIRecv").Device(DEVICE_CPU).HostMemory("src").HostMemory("tag"), RecvKernel);

}  // namespace
}  // namespace adcme_mpi
