// Point-to-point: MPISend and MPIRecv. Each is the other's adjoint, on the
// gradient communicator (adcme_mpi/wrappers/p2p.py). A send used as the backward
// of a receive is `detached`: it never blocks (it completes as later ops
// poll, or at mpi_finalize), so no backward pass can wait on it.
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/substitute.h"
#include "common.h"
#include "tensorflow/core/framework/op.h"

namespace adcme_mpi {
namespace {

absl::Status PointToPointShape(InferenceContext* c) {
  TF_RETURN_IF_ERROR(ScalarInputs(c, 1, 2));
  c->set_output(0, c->input(0));
  return absl::OkStatus();
}

REGISTER_OP("MPISend")
    .Input("a: T")
    .Input("dest: int32")
    .Input("tag: int32")
    .Input("token: float")
    .Output("out: T")
    .Output("token_out: float")
    .Attr(ADCME_MPI_DATA_TYPES)
    .Attr("comm: int")
    .Attr("grad_comm: int")
    .Attr("detached: bool = false")
    .SetIsStateful()
    .SetShapeFn(WithToken<PointToPointShape>)
    .Doc("Sends `a` to `dest`; returns `a`.");

REGISTER_OP("MPIRecv")
    .Input("a: T")
    .Input("src: int32")
    .Input("tag: int32")
    .Input("token: float")
    .Output("received: T")
    .Output("token_out: float")
    .Attr(ADCME_MPI_DATA_TYPES)
    .Attr("comm: int")
    .Attr("grad_comm: int")
    .SetIsStateful()
    .SetShapeFn(WithToken<PointToPointShape>)
    .Doc("Receives from `src` a tensor shaped like the template `a`.");

// Input 1 is the peer (dest or src), input 2 the tag. Sending to oneself is an error.
class PointToPointKernel : public MpiKernel {
 public:
  PointToPointKernel(OpKernelConstruction* c, const char* peer_name)
      : MpiKernel(c), peer_name_(peer_name) {}

 protected:
  absl::Status Run(OpKernelContext* ctx, const CallSite& site) final {
    int peer = 0, tag = 0;
    TF_RETURN_IF_ERROR(ScalarIntArg(ctx, 1, peer_name_, 0, site.size - 1, site, &peer));
    TF_RETURN_IF_ERROR(ScalarIntArg(ctx, 2, "tag", 0, TagUpperBound(site.comm), site, &tag));
    if (peer == site.rank)
      return site.InvalidArgument(absl::Substitute(messages::kToOneself, peer_name_, peer));
    const Tensor& a = ctx->input(0);
    MPI_Datatype type;
    TF_RETURN_IF_ERROR(DatatypeArg(site, "a", a, &type));
    int count = 0;
    TF_RETURN_IF_ERROR(CountOf(site, "a", a.NumElements(), &count));
    return Transfer(ctx, site, a, type, count, peer, tag);
  }
  virtual absl::Status Transfer(OpKernelContext* ctx, const CallSite& site, const Tensor& a,
                                MPI_Datatype type, int count, int peer, int tag) = 0;

 private:
  const char* peer_name_;
};

class SendKernel : public PointToPointKernel {
 public:
  explicit SendKernel(OpKernelConstruction* c) : PointToPointKernel(c, "dest") {
    OP_REQUIRES_OK(c, c->GetAttr("detached", &detached_));
  }
  absl::Status Transfer(OpKernelContext* ctx, const CallSite& site, const Tensor& a,
                        MPI_Datatype type, int count, int dest, int tag) override {
    ctx->set_output(0, a);  // returns its input: no copy
    if (detached_) {
      MPI_Request request;
      // Synchronous mode: it completes only once the receive has matched, so
      // a send nobody receives is seen (and reported) at the end of the program.
      TF_RETURN_IF_ERROR(site.Check(
          MPI_Issend(DataOf(a), count, type, dest, tag, site.comm, &request), "MPI_Issend"));
      DetachSend(request, a,
                 absl::StrCat(site.Describe(), " sent a gradient to rank ", dest, " (tag ", tag,
                              ") that rank ", dest,
                              " never received: its backward pass did not include the matching "
                              "mpi_send. MPI ops after the last one a rank's loss depends on are "
                              "not part of that rank's backward pass; make its loss depend on "
                              "that mpi_send's result (e.g. tf.reduce_sum(sent * 0.0))"));
      return absl::OkStatus();
    }
    RequestSet requests(site);
    requests.Keep(a);
    TF_RETURN_IF_ERROR(requests.Posted(
        MPI_Isend(DataOf(a), count, type, dest, tag, site.comm, requests.Next()), "MPI_Isend"));
    return requests.Wait(absl::StrCat("rank ", dest, " to receive (tag ", tag, ")"));
  }

 private:
  bool detached_ = false;
};

class RecvKernel : public PointToPointKernel {
 public:
  explicit RecvKernel(OpKernelConstruction* c) : PointToPointKernel(c, "src") {}
  absl::Status Transfer(OpKernelContext* ctx, const CallSite& site, const Tensor& a,
                        MPI_Datatype type, int count, int src, int tag) override {
    const std::string waiting_for = absl::StrCat("rank ", src, " to send (tag ", tag, ")");
    MPI_Message message;
    MPI_Status status;
    TF_RETURN_IF_ERROR(ProbeMessage(site, src, tag, &message, &status, waiting_for));
    int sent = 0;
    TF_RETURN_IF_ERROR(site.Check(MPI_Get_count(&status, type, &sent), "MPI_Get_count"));
    if (sent != count) {
      // Take the message off the wire so it cannot match a later receive.
      int bytes = 0;
      TF_RETURN_IF_ERROR(site.Check(MPI_Get_count(&status, MPI_BYTE, &bytes), "MPI_Get_count"));
      std::vector<char> sink(bytes > 0 ? bytes : 1);
      TF_RETURN_IF_ERROR(site.Check(
          MPI_Mrecv(sink.data(), bytes, MPI_BYTE, &message, MPI_STATUS_IGNORE), "MPI_Mrecv"));
      return site.InvalidArgument(
          absl::StrCat("rank ", src, " sent ", bytes, " bytes (tag ", tag, ") but argument 'a' is ",
                       ShapeString(a.dtype(), a.shape()), " (", count,
                       " elements); send and receive must agree on dtype and size"));
    }
    // The template's values are never read: receive into its buffer when TF can hand it over.
    Tensor* out = nullptr;
    TF_RETURN_IF_ERROR(ctx->forward_input_or_allocate_output({0}, 0, a.shape(), &out));
    // (a matched receive: its message is already this op's, nothing to cancel)
    RequestSet requests(site);
    requests.Keep(*out);
    TF_RETURN_IF_ERROR(requests.Posted(
        MPI_Imrecv(DataOf(*out), count, type, &message, requests.Next()), "MPI_Imrecv"));
    return requests.Wait(waiting_for);
  }
};

REGISTER_KERNEL_BUILDER(ADCME_MPI_CPU_KERNEL("MPISend").HostMemory("dest").HostMemory("tag"),
                        SendKernel);
REGISTER_KERNEL_BUILDER(ADCME_MPI_CPU_KERNEL("MPIRecv").HostMemory("src").HostMemory("tag"),
                        RecvKernel);

}  // namespace
}  // namespace adcme_mpi
