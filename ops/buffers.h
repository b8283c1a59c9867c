// Ops run on raw buffers, for callers without an OpKernelContext: the XLA
// custom calls (ops/xla.cc, a library of its own). Each runs the same core
// as the op's TF kernel (collective.cc), inside RunAsKernel (kernel.h): the
// same cross-rank check in the same sequence, the same watchdog waits and
// the same messages.
#ifndef ADCME_MPI_OPS_BUFFERS_H_
#define ADCME_MPI_OPS_BUFFERS_H_

#include <cstdint>

#include "absl/status/status.h"
#include "core.h"

namespace adcme_mpi {

// mpi_allreduce of `input` into `output` (both `shape` elements of `dtype`)
// on the communicator with Fortran handle `comm_handle`; `reduction`: 0 sum,
// 1 max, 2 min, 3 prod (the MPIAllreduce op's `reduction` attr).
absl::Status AllreduceOnBuffers(int64_t comm_handle, int64_t reduction, DataType dtype,
                                const TensorShape& shape, const void* input, void* output);

}  // namespace adcme_mpi

#endif  // ADCME_MPI_OPS_BUFFERS_H_
