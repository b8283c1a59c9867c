"""2-D acoustic wave equation (leapfrog, Ricker source, absorbing sponge) on
m x n patches joined by halo exchanges, and the seismic inverse problem that
recovers the velocity c(x, y) from traces along a line of receivers, with a
checkpointed time loop (adcme_mpi/apps/wave.py).

    mpiexec -n 2 python examples/wave_inverse.py [--N 48 --K 8 --maxiter 30 --out wave_out]

The default number of steps is the smallest stable one; an unstable --steps
is refused. benchmarks/WAVE.md has a run at a realistic size.
"""

import quiet  # noqa: F401  (first: TensorFlow without its start-up lines)
import argparse
import sys

import tensorflow as tf
import adcme_mpi as am
from adcme_mpi.apps import wave

if __name__ == "__main__":
    tf.compat.v1.disable_eager_execution()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--N", type=int, default=48)
    parser.add_argument("--T", type=float, default=1.2, help="final time (domain side 1, c ~ 1)")
    parser.add_argument(
        "--steps", type=int, default=None, help="time steps (default: the smallest stable number)"
    )
    parser.add_argument(
        "--K", type=int, default=8, help="states the checkpointed loop stores (-1: every step)"
    )
    parser.add_argument("--out", default="wave_out")
    parser.add_argument("--maxiter", type=int, default=30)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    try:
        wave.run(
            args.N,
            args.T,
            args.steps,
            None if args.K < 0 else args.K,
            args.out,
            args.maxiter,
            args.verbose,
        )
    except ValueError as err:  # an unstable setting: one line, on rank 0
        if am.mpi_rank() == 0:
            print(err, file=sys.stderr)
        sys.exit(2)
    am.mpi_finalize()
