"""How much of a large op's cost is the destination buffer, in plain mpi4py:
the same MPI_Bcast into (a) one buffer reused every time (what the mpi4py
column of bench_ops.py does), (b) 8 buffers in turn (each touched before),
(c) a fresh np.empty each time (new pages: page faults on first touch).
A TensorFlow op writes a new output tensor unless TF can hand it the input's
buffer, so it sits between (a) and (c). Interleaved rounds, medians.

    mpiexec -n 2 python benchmarks/buffer_reuse.py
"""

import time

import numpy as np
from mpi4py import MPI

COMM = MPI.COMM_WORLD
ROUNDS, REPS = 9, 8


def main():
    for nbytes in (1 << 20, 8 << 20):
        n = nbytes // 8
        same, rotating = np.ones(n), [np.ones(n) for _ in range(REPS)]
        choices = {
            "same buffer": lambda i, same=same: same,
            "8 buffers in turn": lambda i, rotating=rotating: rotating[i],
            "fresh np.empty": lambda i, n=n: np.empty(n),
        }
        times = {name: [] for name in choices}
        for _ in range(ROUNDS):
            for name, pick in choices.items():
                COMM.Barrier()
                t0 = time.perf_counter()
                for i in range(REPS):
                    COMM.Bcast(pick(i), root=0)
                times[name].append(COMM.allreduce((time.perf_counter() - t0) / REPS, op=MPI.MAX))
        if COMM.rank == 0:
            base = np.array(times["same buffer"])
            cells = [
                f"{name} {np.median(t) * 1e6:.0f} us "
                f"({np.median(np.array(t) / base):.2f}x [{min(np.array(t) / base):.2f}.."
                f"{max(np.array(t) / base):.2f}])"
                for name, t in times.items()
            ]
            print(f"bcast {nbytes} B: " + "; ".join(cells), flush=True)


if __name__ == "__main__":
    main()
