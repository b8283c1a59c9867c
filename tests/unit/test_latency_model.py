"""benchmarks/scaling_report.py's latency events: at 2 ranks the counts the
2-host checks recorded (SCALING.md), at P ranks model()'s rule (a small
reduction is ceil(log2 P) events, a halo exchange one), and the sparse
solve's events from counted MPI calls."""

import importlib.util
import os

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location(
    "scaling_report", os.path.join(HERE, "..", "..", "benchmarks", "scaling_report.py")
)
scaling_report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(scaling_report)

MULTIGRID_EXCHANGES = [2, 2, 2, 2, 2, 2, 2, 6, 6, 0]  # 424x212 blocks, as the run recorded


@pytest.mark.parametrize(
    "app,count,halo_check,exchanges,expected",
    [
        ("heat", 20, "deferred", None, (22, 44)),
        ("heat", 20, "blocking", None, (42, 84)),
        ("poisson", 30, "deferred", None, (93, 187)),
        ("poisson", 30, "blocking", None, (123, 248)),
        ("poisson", 12, "deferred", MULTIGRID_EXCHANGES, (427, 855)),
    ],
)
def test_two_ranks_give_the_recorded_counts(app, count, halo_check, exchanges, expected):
    assert scaling_report.latency_events(app, count, halo_check, exchanges) == expected


@pytest.mark.parametrize("ranks,steps", [(1, 0), (2, 1), (3, 2), (4, 2), (5, 3), (1024, 10)])
def test_reductions_cost_log2_p_and_exchanges_one(ranks, steps):
    assert scaling_report.reduction_steps(ranks) == steps
    forward, both = scaling_report.latency_events("heat", 20, "deferred", ranks=ranks)
    assert (forward, both) == (20 + 2 * steps, 2 * (20 + 2 * steps))
    forward, _ = scaling_report.latency_events("poisson", 30, "deferred", ranks=ranks)
    assert forward == 30 * (1 + 2 * steps) + steps + 2 * steps


def test_sparse_events_from_counted_calls():
    """4 ranks: 67 reductions (2 events each) and 622 / 2 exchanges (PETSc
    starts receives and sends in two MPI_Startall calls)."""
    calls = {"allreduce": 1, "allgather": 1, "allreduce_c": 65, "startall": 622, "waitall": 622}
    events, reductions, exchanges = scaling_report.latency_events_from_calls(calls, 4)
    assert (reductions, exchanges) == (67, 311)
    assert events == 67 * 2 + 311
