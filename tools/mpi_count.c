/* Counts a process's MPI calls through the profiling interface (PMPI), for
 * the latency model of code we do not own (PETSc's solves): preloaded with
 * LD_PRELOAD, it wraps the calls below and forwards each to its PMPI_ twin.
 * benchmarks/scaling.py reads the counts with ctypes (mpi_count_read) before
 * and after a solve. PETSc's own message counters miss its reductions
 * (petsc_allreduce_ct stayed at 1 over a GAMG solve of 10 CG iterations).
 *
 *     mpicc -shared -fPIC -O2 -o libmpi_count.so tools/mpi_count.c
 *
 * The counters are plain (not atomic): the ops and PETSc call MPI from one
 * thread at a time. */
#include <mpi.h>

enum {
  kAllreduce,    /* MPI_Allreduce */
  kIallreduce,   /* MPI_Iallreduce */
  kReduce,       /* MPI_Reduce */
  kBcast,        /* MPI_Bcast */
  kAllgather,    /* MPI_Allgather and MPI_Allgatherv */
  kAlltoall,     /* MPI_Alltoall and MPI_Alltoallv */
  kIsend,        /* MPI_Isend */
  kSend,         /* MPI_Send */
  kIrecv,        /* MPI_Irecv */
  kRecv,         /* MPI_Recv */
  kWaitall,      /* MPI_Waitall */
  kBarrier,      /* MPI_Barrier and MPI_Ibarrier */
  kAllreduceC,   /* MPI_Allreduce_c (PETSc's reductions) */
  kStartall,     /* MPI_Startall (PETSc's neighbour exchanges: persistent requests) */
  kStart,        /* MPI_Start */
  kIsendC,       /* MPI_Isend_c */
  kIrecvC,       /* MPI_Irecv_c */
  kCount
};

static double counts[kCount];

/* Copies the counters into `out` (kCount doubles, in the order above) and
 * returns how many there are. */
int mpi_count_read(double* out, int length) {
  for (int i = 0; i < kCount && i < length; ++i) out[i] = counts[i];
  return kCount;
}

int MPI_Allreduce(const void* s, void* r, int n, MPI_Datatype t, MPI_Op op, MPI_Comm c) {
  counts[kAllreduce] += 1;
  return PMPI_Allreduce(s, r, n, t, op, c);
}

int MPI_Iallreduce(const void* s, void* r, int n, MPI_Datatype t, MPI_Op op, MPI_Comm c,
                   MPI_Request* q) {
  counts[kIallreduce] += 1;
  return PMPI_Iallreduce(s, r, n, t, op, c, q);
}

int MPI_Reduce(const void* s, void* r, int n, MPI_Datatype t, MPI_Op op, int root, MPI_Comm c) {
  counts[kReduce] += 1;
  return PMPI_Reduce(s, r, n, t, op, root, c);
}

int MPI_Bcast(void* b, int n, MPI_Datatype t, int root, MPI_Comm c) {
  counts[kBcast] += 1;
  return PMPI_Bcast(b, n, t, root, c);
}

int MPI_Allgather(const void* s, int sn, MPI_Datatype st, void* r, int rn, MPI_Datatype rt,
                  MPI_Comm c) {
  counts[kAllgather] += 1;
  return PMPI_Allgather(s, sn, st, r, rn, rt, c);
}

int MPI_Allgatherv(const void* s, int sn, MPI_Datatype st, void* r, const int* rn,
                   const int* displs, MPI_Datatype rt, MPI_Comm c) {
  counts[kAllgather] += 1;
  return PMPI_Allgatherv(s, sn, st, r, rn, displs, rt, c);
}

int MPI_Alltoall(const void* s, int sn, MPI_Datatype st, void* r, int rn, MPI_Datatype rt,
                 MPI_Comm c) {
  counts[kAlltoall] += 1;
  return PMPI_Alltoall(s, sn, st, r, rn, rt, c);
}

int MPI_Alltoallv(const void* s, const int* sn, const int* sd, MPI_Datatype st, void* r,
                  const int* rn, const int* rd, MPI_Datatype rt, MPI_Comm c) {
  counts[kAlltoall] += 1;
  return PMPI_Alltoallv(s, sn, sd, st, r, rn, rd, rt, c);
}

int MPI_Isend(const void* b, int n, MPI_Datatype t, int dest, int tag, MPI_Comm c,
              MPI_Request* q) {
  counts[kIsend] += 1;
  return PMPI_Isend(b, n, t, dest, tag, c, q);
}

int MPI_Send(const void* b, int n, MPI_Datatype t, int dest, int tag, MPI_Comm c) {
  counts[kSend] += 1;
  return PMPI_Send(b, n, t, dest, tag, c);
}

int MPI_Irecv(void* b, int n, MPI_Datatype t, int src, int tag, MPI_Comm c, MPI_Request* q) {
  counts[kIrecv] += 1;
  return PMPI_Irecv(b, n, t, src, tag, c, q);
}

int MPI_Recv(void* b, int n, MPI_Datatype t, int src, int tag, MPI_Comm c, MPI_Status* st) {
  counts[kRecv] += 1;
  return PMPI_Recv(b, n, t, src, tag, c, st);
}

int MPI_Waitall(int n, MPI_Request* q, MPI_Status* st) {
  counts[kWaitall] += 1;
  return PMPI_Waitall(n, q, st);
}

int MPI_Barrier(MPI_Comm c) {
  counts[kBarrier] += 1;
  return PMPI_Barrier(c);
}

int MPI_Ibarrier(MPI_Comm c, MPI_Request* q) {
  counts[kBarrier] += 1;
  return PMPI_Ibarrier(c, q);
}

int MPI_Allreduce_c(const void* s, void* r, MPI_Count n, MPI_Datatype t, MPI_Op op, MPI_Comm c) {
  counts[kAllreduceC] += 1;
  return PMPI_Allreduce_c(s, r, n, t, op, c);
}

int MPI_Startall(int n, MPI_Request* q) {
  counts[kStartall] += 1;
  return PMPI_Startall(n, q);
}

int MPI_Start(MPI_Request* q) {
  counts[kStart] += 1;
  return PMPI_Start(q);
}

int MPI_Isend_c(const void* b, MPI_Count n, MPI_Datatype t, int dest, int tag, MPI_Comm c,
                MPI_Request* q) {
  counts[kIsendC] += 1;
  return PMPI_Isend_c(b, n, t, dest, tag, c, q);
}

int MPI_Irecv_c(void* b, MPI_Count n, MPI_Datatype t, int src, int tag, MPI_Comm c,
                MPI_Request* q) {
  counts[kIrecvC] += 1;
  return PMPI_Irecv_c(b, n, t, src, tag, c, q);
}
