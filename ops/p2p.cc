// Point-to-point: MPISend and MPIRecv, each the other's adjoint, and
// MPIExchange (MPI_Sendrecv: every rank sends and receives), its own adjoint
// in the opposite direction; all on the gradient communicator in a backward
// pass (adcme_mpi/wrappers/p2p.py). A send made by a backward pass is
// `detached`: it never blocks (it completes as later ops poll, or at
// mpi_finalize), so no backward pass can wait on a send.
#include <cstring>
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

absl::Status ExchangeShape(InferenceContext* c) {
  TF_RETURN_IF_ERROR(ScalarInputs(c, 1, 3));
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

REGISTER_OP("MPIExchange")
    .Input("a: T")
    .Input("dest: int32")
    .Input("source: int32")
    .Input("tag: int32")
    .Input("token: float")
    .Output("received: T")
    .Output("token_out: float")
    .Attr(ADCME_MPI_DATA_TYPES)
    .Attr("comm: int")
    .Attr("grad_comm: int")
    .Attr("detached: bool = false")
    .SetIsStateful()
    .SetShapeFn(WithToken<ExchangeShape>)
    .Doc("Sends `a` to `dest` and receives from `source` a tensor shaped like `a` (-1: none).");

// A send that never blocks (made by a backward pass): synchronous mode, so
// it completes only once the receive has matched, and a send nobody
// receives is seen (and reported) at the end of the program. `forward_op`
// is the op whose backward pass must receive it.
absl::Status SendDetached(const CallSite& site, const Tensor& a, MPI_Datatype type, int count,
                          int dest, int tag, const char* forward_op) {
  MPI_Request request;
  TF_RETURN_IF_ERROR(
      site.Check(MPI_Issend(DataOf(a), count, type, dest, tag, site.comm, &request), "MPI_Issend"));
  DetachSend(
      request, a,
      absl::StrCat(site.Describe(), " sent a gradient to rank ", dest, " (tag ", tag,
                   ") that rank ", dest,
                   " never received: its backward pass did not include the matching ", forward_op,
                   ". MPI ops after the last one a rank's loss depends on are "
                   "not part of that rank's backward pass; make its loss depend on "
                   "that ",
                   forward_op, "'s result (e.g. tf.reduce_sum(sent * 0.0))"));
  return absl::OkStatus();
}

// Waits for the message from `src` (tag `tag`) and checks that it holds
// `count` elements of `type`, as the template `a` does; if not, takes it off
// the wire (so it cannot match a later receive) and says so.
absl::Status ProbeOfSize(const CallSite& site, const Tensor& a, MPI_Datatype type, int count,
                         int src, int tag, const std::string& waiting_for, MPI_Message* message) {
  MPI_Status status;
  TF_RETURN_IF_ERROR(ProbeMessage(site, src, tag, message, &status, waiting_for));
  int sent = 0;
  TF_RETURN_IF_ERROR(site.Check(MPI_Get_count(&status, type, &sent), "MPI_Get_count"));
  if (sent == count) return absl::OkStatus();
  int bytes = 0;
  TF_RETURN_IF_ERROR(site.Check(MPI_Get_count(&status, MPI_BYTE, &bytes), "MPI_Get_count"));
  std::vector<char> sink(bytes > 0 ? bytes : 1);
  TF_RETURN_IF_ERROR(
      site.Check(MPI_Mrecv(sink.data(), bytes, MPI_BYTE, message, MPI_STATUS_IGNORE), "MPI_Mrecv"));
  return site.InvalidArgument(
      absl::StrCat("rank ", src, " sent ", bytes, " bytes (tag ", tag, ") but argument 'a' is ",
                   ShapeString(a.dtype(), a.shape()), " (", count,
                   " elements); send and receive must agree on dtype and size"));
}

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
    if (detached_) return SendDetached(site, a, type, count, dest, tag, "mpi_send");
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
    TF_RETURN_IF_ERROR(ProbeOfSize(site, a, type, count, src, tag, waiting_for, &message));
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

// MPI_Sendrecv semantics, with either partner optional (-1: a boundary, the
// output is zeros). Sending to oneself is allowed (a ring of one rank).
class ExchangeKernel : public MpiKernel {
 public:
  explicit ExchangeKernel(OpKernelConstruction* c) : MpiKernel(c) {
    OP_REQUIRES_OK(c, c->GetAttr("detached", &detached_));
  }

 protected:
  absl::Status Run(OpKernelContext* ctx, const CallSite& site) final {
    int dest = -1, source = -1, tag = 0;
    TF_RETURN_IF_ERROR(ScalarIntArg(ctx, 1, "dest", -1, site.size - 1, site, &dest));
    TF_RETURN_IF_ERROR(ScalarIntArg(ctx, 2, "source", -1, site.size - 1, site, &source));
    TF_RETURN_IF_ERROR(ScalarIntArg(ctx, 3, "tag", 0, TagUpperBound(site.comm), site, &tag));
    const Tensor& a = ctx->input(0);
    MPI_Datatype type;
    TF_RETURN_IF_ERROR(DatatypeArg(site, "a", a, &type));
    int count = 0;
    TF_RETURN_IF_ERROR(CountOf(site, "a", a.NumElements(), &count));
    Tensor* out = nullptr;
    TF_RETURN_IF_ERROR(ctx->allocate_output(0, a.shape(), &out));
    RequestSet requests(site);
    std::string waiting_for;
    if (dest >= 0) {
      if (detached_) {
        TF_RETURN_IF_ERROR(SendDetached(site, a, type, count, dest, tag, "mpi_exchange"));
      } else {
        requests.Keep(a);
        TF_RETURN_IF_ERROR(requests.Posted(
            MPI_Isend(DataOf(a), count, type, dest, tag, site.comm, requests.Next()), "MPI_Isend"));
        waiting_for = absl::StrCat("rank ", dest, " to receive (tag ", tag, ")");
      }
    }
    if (source >= 0) {
      const std::string from = absl::StrCat("rank ", source, " to send (tag ", tag, ")");
      MPI_Message message;
      // (an early return abandons the send above with `a` kept alive)
      TF_RETURN_IF_ERROR(ProbeOfSize(site, a, type, count, source, tag, from, &message));
      requests.Keep(*out);
      TF_RETURN_IF_ERROR(requests.Posted(
          MPI_Imrecv(DataOf(*out), count, type, &message, requests.Next()), "MPI_Imrecv"));
      waiting_for = waiting_for.empty() ? from : absl::StrCat(from, " and ", waiting_for);
    } else if (out->NumElements() > 0) {
      memset(DataOf(*out), 0, out->TotalBytes());
    }
    return requests.Wait(waiting_for);
  }

 private:
  bool detached_ = false;
};

REGISTER_KERNEL_BUILDER(ADCME_MPI_CPU_KERNEL("MPISend").HostMemory("dest").HostMemory("tag"),
                        SendKernel);
REGISTER_KERNEL_BUILDER(ADCME_MPI_CPU_KERNEL("MPIRecv").HostMemory("src").HostMemory("tag"),
                        RecvKernel);
REGISTER_KERNEL_BUILDER(
    ADCME_MPI_CPU_KERNEL("MPIExchange").HostMemory("dest").HostMemory("source").HostMemory("tag"),
    ExchangeKernel);

}  // namespace
}  // namespace adcme_mpi
