// Where should small collectives stop riding inside the cross-rank check?
// (issue 24, item 3; ops/checks.cc, kInlineBytes)
//
// A checked collective of s bytes can move its data in two ways:
//   inline:   one reduction of a (64 + s)-byte check packet whose user-defined
//             op compares digests and also sums the data (mpi_sum,
//             mpi_allreduce) or hands on the root's value (mpi_bcast); the
//             data is copied into the packet and out of it;
//   separate: one reduction of a 64-byte packet (the check alone), then the
//             data's own MPI_Allreduce(MPI_SUM) or MPI_Bcast.
// Both are timed here with the op's own MPI pattern (persistent
// MPI_Allreduce_init requests for the packets, as the check uses), for s = 8 B
// .. 64 KiB, in interleaved rounds: each round times every variant once
// (slowest rank). Printed as one JSON object: per size and variant the median
// over rounds, and the median, min and max of the per-round ratio
// inline / separate.
//
// The packet is one element of a contiguous type, so MPI cannot split it: the
// inline reduction is recursive doubling or a tree with the whole packet on
// every step (log2 P steps of 64 + s bytes), where MPI's own allreduce of a
// large message switches to reduce-scatter + allgather. That, and the user
// function's loop against MPI's built-in sum, is what the crossover measures.
//
//   mpicc -O2 -o /tmp/inline_threshold benchmarks/inline_threshold.c
//   mpiexec -n 2 /tmp/inline_threshold [rounds [divide repetitions by]]
//   (benchmarks/run.sh writes benchmarks/results/inline_threshold_<P>.json)
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { kHeaderBytes = 64, kMaxBytes = 65536, kVariants = 6, kMaxRounds = 64 };
// check_padded: a check that carries no data in a packet sized for s bytes,
// what every larger collective's and every halo exchange's check would pay
// with kInlineBytes = s
static const char* kNames[kVariants] = {"check_alone",  "inline_sum",     "separate_sum",
                                        "inline_bcast", "separate_bcast", "check_padded"};

typedef struct {
  uint64_t digest;
  int64_t disagree, combine, from_root, count, unused[3];
  double data[];  // s bytes
} Packet;

static int packet_bytes;  // of the reduction in flight (the user op's element)

static void combine(void* in_v, void* inout_v, int* len, MPI_Datatype* type) {
  (void)type;
  for (int k = 0; k < *len; ++k) {
    Packet* in = (Packet*)((char*)in_v + (size_t)k * packet_bytes);
    Packet* inout = (Packet*)((char*)inout_v + (size_t)k * packet_bytes);
    if (in->disagree || in->digest != inout->digest) inout->disagree = 1;
    if (inout->disagree) continue;
    if (inout->combine == 2) {  // the root's value
      if (in->from_root) {
        memcpy(inout->data, in->data, (size_t)inout->count * sizeof(double));
        inout->from_root = 1;
      }
    } else if (inout->combine == 1) {
      for (int64_t i = 0; i < inout->count; ++i) inout->data[i] += in->data[i];
    }
  }
}

static int compare(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return (x > y) - (x < y);
}
static double median(double* v, int n) {
  qsort(v, n, sizeof(double), compare);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank, size;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  int rounds = argc > 1 ? atoi(argv[1]) : 15;
  if (rounds < 1 || rounds > kMaxRounds) rounds = 15;
  // more ranks than cores (4 on the 2-core machine): every message step waits
  // for a time slice, so fewer repetitions keep the run short
  const int divide = argc > 2 ? atoi(argv[2]) : 1;
  MPI_Op op;
  MPI_Op_create(combine, 1, &op);
  const int sizes[] = {8, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536};
  const int nsizes = sizeof(sizes) / sizeof(sizes[0]);
  Packet* small = calloc(1, kHeaderBytes);
  Packet* big = calloc(1, kHeaderBytes + kMaxBytes);
  double* in = malloc(kMaxBytes);
  double* out = malloc(kMaxBytes);
  for (int i = 0; i < kMaxBytes / 8; ++i) in[i] = rank + i;
  MPI_Datatype small_type;
  MPI_Type_contiguous(kHeaderBytes, MPI_BYTE, &small_type);
  MPI_Type_commit(&small_type);
  MPI_Request small_request;
  MPI_Allreduce_init(MPI_IN_PLACE, small, 1, small_type, op, MPI_COMM_WORLD, MPI_INFO_NULL,
                     &small_request);
  if (rank == 0)
    printf("{\"ranks\": %d, \"rounds\": %d, \"reps_divided_by\": %d, \"rows\": [\n", size, rounds,
           divide);
  for (int z = 0; z < nsizes; ++z) {
    const int s = sizes[z], count = s / 8;
    int reps = (s <= 4096 ? 400 : s <= 16384 ? 200 : 100) / (divide > 0 ? divide : 1);
    if (reps < 1) reps = 1;
    MPI_Datatype big_type;
    MPI_Type_contiguous(kHeaderBytes + s, MPI_BYTE, &big_type);
    MPI_Type_commit(&big_type);
    MPI_Request big_request;
    MPI_Allreduce_init(MPI_IN_PLACE, big, 1, big_type, op, MPI_COMM_WORLD, MPI_INFO_NULL,
                       &big_request);
    double times[kVariants][kMaxRounds];
    double ratio_sum[kMaxRounds], ratio_bcast[kMaxRounds], ratio_padded[kMaxRounds];
    for (int r = 0; r < rounds + 1; ++r) {  // round 0 warms up
      for (int v = 0; v < kVariants; ++v) {
        MPI_Barrier(MPI_COMM_WORLD);
        const double t0 = MPI_Wtime();
        for (int k = 0; k < reps; ++k) {
          const int inline_data = v == 1 || v == 3;
          const int padded = inline_data || v == 5;
          Packet* p = padded ? big : small;
          packet_bytes = padded ? kHeaderBytes + s : kHeaderBytes;
          memset(p, 0, kHeaderBytes);
          p->digest = 12345;
          if (inline_data) {
            p->combine = v == 1 ? 1 : 2;
            p->count = count;
            if (v == 1 || rank == 0) memcpy(p->data, in, s);
            p->from_root = v == 3 && rank == 0;
          }
          MPI_Request* request = padded ? &big_request : &small_request;
          MPI_Start(request);
          MPI_Wait(request, MPI_STATUS_IGNORE);
          if (inline_data) memcpy(out, p->data, s);
          if (v == 2) MPI_Allreduce(in, out, count, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
          if (v == 4) MPI_Bcast(rank == 0 ? in : out, count, MPI_DOUBLE, 0, MPI_COMM_WORLD);
        }
        double t = (MPI_Wtime() - t0) / reps;
        MPI_Allreduce(MPI_IN_PLACE, &t, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        if (r > 0) times[v][r - 1] = t;
      }
      if (r > 0) {
        ratio_sum[r - 1] = times[1][r - 1] / times[2][r - 1];
        ratio_bcast[r - 1] = times[3][r - 1] / times[4][r - 1];
        ratio_padded[r - 1] = times[5][r - 1] / times[0][r - 1];
      }
    }
    MPI_Request_free(&big_request);
    MPI_Type_free(&big_type);
    if (rank == 0) {
      printf(" {\"bytes\": %d", s);
      for (int v = 0; v < kVariants; ++v)
        printf(", \"%s_us\": %.3f", kNames[v], 1e6 * median(times[v], rounds));
      double* ratios[3] = {ratio_sum, ratio_bcast, ratio_padded};
      const char* names[3] = {"inline/separate_sum", "inline/separate_bcast",
                              "check_padded/check_alone"};
      for (int k = 0; k < 3; ++k) {
        const double m = median(ratios[k], rounds);  // sorts: min and max at the ends
        printf(", \"%s\": [%.3f, %.3f, %.3f]", names[k], m, ratios[k][0], ratios[k][rounds - 1]);
      }
      printf("}%s\n", z + 1 < nsizes ? "," : "");
      fflush(stdout);
    }
  }
  if (rank == 0) printf("]}\n");
  MPI_Request_free(&small_request);
  MPI_Type_free(&small_type);
  MPI_Op_free(&op);
  MPI_Finalize();
  return 0;
}
