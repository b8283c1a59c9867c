"""MPI_ANY_SOURCE receives across hosts: every rank sends one message to
every other rank and receives them with MPI_ANY_SOURCE, 2,000 times; prints
"rank R ok" per rank at the end. A minimal reproducer, without TensorFlow or
PETSc, of why the sparse solve hung across hosts:

    MPIR_CVAR_CH4_NETMOD=ucx python tools/netns_hosts.py run --hosts 4 -- \\
        python tools/any_source_check.py     # MPICH 5.0.2 wheel, UCX over TCP: hangs
    python tools/netns_hosts.py run --hosts 4 -- python tools/any_source_check.py   # OFI: ok

Measured here (4 network-namespace hosts x 1 rank): UCX hung (or the job
failed) in 5 of 5 runs; the same exchange with the source named (--known)
passed with UCX in 2 of 2, and OFI's TCP provider passed in 5 of 5.
"""

import sys

import numpy as np
from mpi4py import MPI

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
known = "--known" in sys.argv
for step in range(2000):
    tag = step % 7
    sources = [s for s in range(size) if s != rank]
    receives = [
        comm.Irecv(np.empty(1), source=s if known else MPI.ANY_SOURCE, tag=tag) for s in sources
    ]
    sends = [comm.Isend(np.full(1, float(rank)), dest=d, tag=tag) for d in sources]
    MPI.Request.Waitall(receives + sends)
print(f"rank {rank} ok", flush=True)
