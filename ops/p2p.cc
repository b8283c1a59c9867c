// Point-to-point: MPISend and MPIRecv, each the other's adjoint, and
// MPIExchange (MPI_Sendrecv: every rank sends and receives), its own adjoint
// in the opposite direction; all on the gradient communicator in a backward
// pass (adcme_mpi/wrappers/p2p.py). A send made by a backward pass is
// `detached`: it never blocks (it completes as later ops poll, or at
// mpi_finalize), so no backward pass can wait on a send.
// MPIIsend / MPIIrecv / MPIWait: the non-blocking pair and its wait (below).
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/substitute.h"
#include "c_api.h"
#include "common.h"
#include "tensorflow/core/framework/op.h"

namespace adcme_mpi {
namespace {

absl::Status PointToPointShape(InferenceContext* c) {
  TF_RETURN_IF_ERROR(ScalarInputs(c, 1, 2));
  c->set_output(0, c->input(0));
  return absl::OkStatus();
}

absl::Status HandleShape(InferenceContext* c) {
  TF_RETURN_IF_ERROR(ScalarInputs(c, 1, 2));
  c->set_output(0, c->Scalar());
  return absl::OkStatus();
}

absl::Status WaitShape(InferenceContext* c) {
  TF_RETURN_IF_ERROR(ScalarInputs(c, 0, 0));
  TF_RETURN_IF_ERROR(ScalarInputs(c, 2, 3));
  c->set_output(0, c->input(1));
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
    TF_RETURN_IF_ERROR(OutputBuffer(ctx, 0, a.shape(), &out));
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
    TF_RETURN_IF_ERROR(OutputBuffer(ctx, 0, a.shape(), &out));
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

// ---- Non-blocking: MPIIsend / MPIIrecv post a message and return a handle,
// MPIWait completes it. A handle is a float64 scalar holding a request id
// (exact up to 2^53), so it is a tensor that gradients flow through: the
// gradient of a handle is the handle of the adjoint message (a wait's
// gradient posts it, the post's gradient waits on it; wrappers/p2p.py).
// Requests live in one process-wide table with the tensors they use, so MPI
// never touches memory TensorFlow has freed; a request never waited on is
// reported at the end of the program (adcme_mpi_unwaited_requests).

REGISTER_OP("MPIIsend")
    .Input("a: T")
    .Input("dest: int32")
    .Input("tag: int32")
    .Input("token: float")
    .Output("handle: double")
    .Output("token_out: float")
    .Attr(ADCME_MPI_DATA_TYPES)
    .Attr("comm: int")
    .Attr("grad_comm: int")
    .SetIsStateful()
    .SetShapeFn(WithToken<HandleShape>)
    .Doc("Posts a send of `a` to `dest`; returns its handle (mpi_wait completes it).");

REGISTER_OP("MPIIrecv")
    .Input("a: T")
    .Input("src: int32")
    .Input("tag: int32")
    .Input("token: float")
    .Output("handle: double")
    .Output("token_out: float")
    .Attr(ADCME_MPI_DATA_TYPES)
    .Attr("comm: int")
    .Attr("grad_comm: int")
    .SetIsStateful()
    .SetShapeFn(WithToken<HandleShape>)
    .Doc(
        "Posts a receive from `src` of a tensor shaped like the template `a`; returns its handle.");

REGISTER_OP("MPIWait")
    .Input("handle: double")
    .Input("a: T")
    .Input("peer: int32")
    .Input("tag: int32")
    .Input("token: float")
    .Output("out: T")
    .Output("token_out: float")
    .Attr(ADCME_MPI_DATA_TYPES)
    .Attr("send: bool")
    .Attr("comm: int")
    .Attr("grad_comm: int")
    .SetIsStateful()
    .SetShapeFn(WithToken<WaitShape>)
    .Doc(
        "Completes the request `handle` posted by MPIIsend (`send`; returns `a`, the tensor sent) "
        "or MPIIrecv (returns what was received, shaped like its template `a`); `peer` and "
        "`tag` are the post's.");

struct PostedRequest {
  MPI_Request request = MPI_REQUEST_NULL;
  Tensor buffer;  // send: the input; receive: the buffer it receives into
  bool send = false;
  int peer = 0, tag = 0, count = 0;
  MPI_Datatype type = MPI_DATATYPE_NULL;
  CallSite site;  // the posting op's
};

// Lock order: requests_mu is a leaf (family.h): nothing else is taken under it.
std::mutex requests_mu;
int64_t next_request_id = 1;  // under requests_mu; ids never repeat
std::map<int64_t, PostedRequest>& Requests() {
  static auto* requests = new std::map<int64_t, PostedRequest>();  // leaked: outlives exit hooks
  return *requests;
}

std::string Describe(const PostedRequest& r) {
  return absl::StrCat(r.site.Describe(),
                      r.send ? " posted a send to rank " : " posted a receive from rank ", r.peer,
                      " (tag ", r.tag, ", ", ShapeString(r.buffer.dtype(), r.buffer.shape()), ")");
}

// Posts the request and records it; the handle output gets its id.
class PostKernel : public PointToPointKernel {
 public:
  PostKernel(OpKernelConstruction* c, const char* peer_name, bool send)
      : PointToPointKernel(c, peer_name), send_(send) {}
  absl::Status Transfer(OpKernelContext* ctx, const CallSite& site, const Tensor& a,
                        MPI_Datatype type, int count, int peer, int tag) override {
    Tensor* handle = nullptr;
    TF_RETURN_IF_ERROR(ctx->allocate_output(0, TensorShape({}), &handle));
    PostedRequest r;
    r.send = send_;
    r.peer = peer;
    r.tag = tag;
    r.count = count;
    r.type = type;
    r.site = site;
    if (send_) {
      r.buffer = a;  // kept alive by the table until the wait
      TF_RETURN_IF_ERROR(site.Check(
          MPI_Isend(DataOf(a), count, type, peer, tag, site.comm, &r.request), "MPI_Isend"));
    } else {
      TF_RETURN_IF_ERROR(ctx->allocate_temp(a.dtype(), a.shape(), &r.buffer));
      TF_RETURN_IF_ERROR(site.Check(
          MPI_Irecv(DataOf(r.buffer), count, type, peer, tag, site.comm, &r.request), "MPI_Irecv"));
    }
    std::lock_guard<std::mutex> lock(requests_mu);
    const int64_t id = next_request_id++;
    Requests().emplace(id, std::move(r));
    handle->scalar<double>()() = static_cast<double>(id);
    return absl::OkStatus();
  }

 private:
  const bool send_;
};

class IsendKernel : public PostKernel {
 public:
  explicit IsendKernel(OpKernelConstruction* c) : PostKernel(c, "dest", true) {}
};

class IrecvKernel : public PostKernel {
 public:
  explicit IrecvKernel(OpKernelConstruction* c) : PostKernel(c, "src", false) {}
};

class WaitKernel : public MpiKernel {
 public:
  explicit WaitKernel(OpKernelConstruction* c) : MpiKernel(c) {
    OP_REQUIRES_OK(c, c->GetAttr("send", &send_));
  }

 protected:
  absl::Status Run(OpKernelContext* ctx, const CallSite& site) final {
    const double value = ctx->input(0).scalar<double>()();
    const int64_t id = static_cast<int64_t>(value);
    PostedRequest r;
    {
      std::lock_guard<std::mutex> lock(requests_mu);
      auto it =
          id >= 1 && static_cast<double>(id) == value ? Requests().find(id) : Requests().end();
      if (it == Requests().end()) {
        if (id >= 1 && id < next_request_id && static_cast<double>(id) == value)
          return site.InvalidArgument(absl::StrCat(
              "argument 'handle' = ", id,
              " was already waited on (or its wait failed); wait on a handle exactly once"));
        return site.InvalidArgument(absl::StrCat("argument 'handle' = ", value,
                                                 " is not a handle from mpi_isend or mpi_irecv"));
      }
      r = std::move(it->second);
      Requests().erase(it);  // taken: a second wait on it is an error, never a hang
    }
    // The wait completes the request, or abandons it with its buffer kept alive.
    RequestSet requests(site);
    requests.Keep(r.buffer);
    *requests.Next(!r.send) = r.request;
    TF_RETURN_IF_ERROR(requests.Posted(MPI_SUCCESS, r.send ? "MPI_Isend" : "MPI_Irecv"));
    if (r.send != send_ || r.site.comm != site.comm || r.buffer.dtype() != ctx->input(1).dtype())
      return site.InvalidArgument(absl::StrCat("argument 'handle' = ", id, " is ", Describe(r),
                                               ", which this wait does not match"));
    const std::string waiting_for = r.send ? absl::StrCat("rank ", r.peer, " to receive (tag ",
                                                          r.tag, ") the message of ", r.site.op)
                                           : absl::StrCat("rank ", r.peer, " to send (tag ", r.tag,
                                                          ") the message of ", r.site.op);
    std::vector<MPI_Status> statuses;
    absl::Status status = requests.Wait(waiting_for, &statuses);
    if (!r.send) {
      // A receive cannot check the size before the message arrives (that
      // would block the post): it is checked here. A longer message fails
      // as truncated, a shorter one is counted.
      int got = r.count;
      if (status.ok())
        TF_RETURN_IF_ERROR(site.Check(MPI_Get_count(&statuses[0], r.type, &got), "MPI_Get_count"));
      if ((!status.ok() && !absl::IsFailedPrecondition(status)) || got != r.count)
        return site.InvalidArgument(absl::StrCat(
            "the message from rank ", r.peer, " (tag ", r.tag, ") does not match ", r.site.op,
            "'s argument 'a' (", ShapeString(r.buffer.dtype(), r.buffer.shape()), ", ", r.count,
            " elements): ",
            status.ok() ? absl::StrCat("it holds ", got, " elements")
            : absl::StrContains(status.message(), "truncat")
                ? absl::StrCat("it holds more than ", r.count, " elements (truncated)")
                : std::string(status.message()),
            "; send and receive must agree on dtype and size"));
    }
    TF_RETURN_IF_ERROR(status);
    ctx->set_output(0, r.send ? ctx->input(1) : r.buffer);
    return absl::OkStatus();
  }

 private:
  bool send_ = false;
};

REGISTER_KERNEL_BUILDER(
    ADCME_MPI_CPU_KERNEL("MPIIsend").HostMemory("dest").HostMemory("tag").HostMemory("handle"),
    IsendKernel);
REGISTER_KERNEL_BUILDER(
    ADCME_MPI_CPU_KERNEL("MPIIrecv").HostMemory("src").HostMemory("tag").HostMemory("handle"),
    IrecvKernel);
REGISTER_KERNEL_BUILDER(
    ADCME_MPI_CPU_KERNEL("MPIWait").HostMemory("handle").HostMemory("peer").HostMemory("tag"),
    WaitKernel);

}  // namespace
}  // namespace adcme_mpi

// At the end of the program: requests posted by mpi_isend / mpi_irecv (or
// their gradients) that nothing waited on. Writes the first into `buffer`
// and returns how many. Receives are cancelled, and every request is handed
// to the detached list with its buffer, so MPI never touches freed memory.
ADCME_MPI_C_API int adcme_mpi_unwaited_requests(char* buffer, int length) {
  using namespace adcme_mpi;
  std::map<int64_t, PostedRequest> left;
  {
    std::lock_guard<std::mutex> lock(requests_mu);
    left.swap(Requests());
  }
  if (left.empty()) return 0;
  const PostedRequest& first = left.begin()->second;
  std::snprintf(
      buffer, length, "%s",
      absl::StrCat(
          Describe(first), " that was never waited on (handle ", left.begin()->first,
          "); every handle of mpi_isend / mpi_irecv needs one mpi_wait",
          left.size() > 1 ? absl::StrCat(" (", left.size(), " such handles)") : std::string())
          .c_str());
  for (auto& [id, r] : left) {
    RequestSet requests(r.site);  // its destructor cancels the receive and detaches
    requests.Keep(r.buffer);
    *requests.Next(!r.send) = r.request;
  }
  return static_cast<int>(left.size());
}
