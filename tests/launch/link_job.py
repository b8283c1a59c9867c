"""The job tests/launch/test_hosts.py runs across hosts joined by a shaped
link (tools/netns_hosts.py --delay-us D0,D1,...): an 8-byte mpi4py
ping-pong between rank 0 and the first rank on the other host, at each of
the link's delays in turn (rank 0 moves the link on with SIGUSR1). Rank 0
prints "delay <i>: round trip <median> us" for each.

    python link_job.py COUNT_OF_DELAYS RANKS_PER_HOST
"""

import os
import signal
import sys
import time

import numpy as np
from mpi4py import MPI

COMM = MPI.COMM_WORLD
RANK = COMM.Get_rank()


def round_trips(peer, repeats=20):
    buf, trips = np.zeros(1), []
    for _ in range(repeats):
        start = time.perf_counter()
        if RANK == 0:
            COMM.Send(buf, dest=peer)
            COMM.Recv(buf, source=peer)
        elif RANK == peer:
            COMM.Recv(buf, source=0)
            COMM.Send(buf, dest=0)
        trips.append(time.perf_counter() - start)
    return float(np.median(trips))


def main():
    delays, peer = int(sys.argv[1]), int(sys.argv[2])  # rank 0's peer: the next host's first
    for i in range(delays):
        COMM.Barrier()
        trip = round_trips(peer)
        if RANK == 0:
            print(f"delay {i}: round trip {trip * 1e6:.0f} us", flush=True)
            os.kill(int(os.environ["ADCME_DELAY_LINK_PID"]), signal.SIGUSR1)
        COMM.Barrier()


if __name__ == "__main__":
    main()
