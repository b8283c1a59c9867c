// What an op family's file (collective.cc, p2p.cc, halo.cc, sparse.cc)
// includes. The files of ops/ and what each owns, in dependency order (each
// includes and calls only the ones above it; no circle):
//   core.h/.cc      settings (handed over from adcme_mpi/settings.py), the op
//                   table's names and check kinds, CallSite, argument helpers
//   wait.h/.cc      the wait service: polling, the watchdog and watched
//                   sections, closing at mpi_finalize, RequestSet, detached sends
//   family.h/.cc    communicator families (forward, backward and check
//                   communicators, sequence counter, check state, sparse
//                   cache slot), their registry, ops in flight; the lock order
//   checks.h/.cc    the cross-rank agreement check, deferred checks, sharing
//                   one rank's bad input with every rank, the end of the program
//   kernel.h/.cc    MpiKernel, the base of every kernel; the MPI thread
//   common.h        this file: the above, and the shape-function helpers
//   c_api.h         the plain C entry points the Python side calls (ctypes)
// Op families keep their REGISTER_OPs next to their kernels: collective.cc,
// p2p.cc, halo.cc; sparse.cc (PETSc) is a library of its own.
//
// Ordering token: every op takes a float scalar `token` as its last input and
// returns one as its last output. The Python wrappers thread one token through
// all MPI ops of a program (adcme_mpi/ordering.py), so data dependencies keep
// MPI ops in program order in every mode, and the token's gradient runs the
// backward ops in exact reverse order.
#ifndef ADCME_MPI_OPS_COMMON_H_
#define ADCME_MPI_OPS_COMMON_H_

#include "checks.h"
#include "core.h"
#include "family.h"
#include "kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/platform/errors.h"
#include "wait.h"

namespace adcme_mpi {

using tensorflow::shape_inference::InferenceContext;

// Adds the ordering token to a shape function: the last input must be a
// scalar and the last output is one.
template <absl::Status (*Fn)(InferenceContext*)>
absl::Status WithToken(InferenceContext* c) {
  tensorflow::shape_inference::ShapeHandle unused;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(c->num_inputs() - 1), 0, &unused));
  TF_RETURN_IF_ERROR(Fn(c));
  c->set_output(c->num_outputs() - 1, c->Scalar());
  return absl::OkStatus();
}
// Inputs 1.. up to the token are scalars (root, peer, tag).
absl::Status ScalarInputs(InferenceContext* c, int first, int last);

}  // namespace adcme_mpi

// Interface shared by every op: data types, communicators, the token.
// float16/bfloat16 travel as 2-byte words and reduce in float32 (collective.cc,
// Widened); complex64/128 as MPI's C complex types (sum and prod only).
#define ADCME_MPI_DATA_TYPES \
  "T: {float, double, int32, int64, half, bfloat16, complex64, complex128}"
// The halo exchange's: its gradient kernel adds in T and exists for float and
// double only, so the new dtypes are not offered there.
#define ADCME_MPI_HALO_TYPES "T: {float, double, int32, int64}"

// Kernel registration: CPU, with the small scalar inputs in host memory.
#define ADCME_MPI_CPU_KERNEL(op) \
  Name(op).Device(::tensorflow::DEVICE_CPU).HostMemory("token").HostMemory("token_out")

#endif  // ADCME_MPI_OPS_COMMON_H_
