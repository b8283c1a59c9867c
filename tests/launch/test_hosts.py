"""Across hosts: jobs on 2 hosts x 2 ranks over TCP (tools/netns_hosts.py:
network namespaces with their own hostnames on a bridge), with the MPI this
suite runs on (MPIEXEC: MPICH's hydra or Open MPI's mpirun).

- The same computations (every op forward and backward, the optimizer, the
  heat and Poisson inverse problems) give bitwise the same arrays on every
  rank as on one host, and megabytes cross the hosts' links.
- A shaped link (latency injected in user space, tools/delay_link.c) carries
  the MPI traffic and delays it as asked.
- Faults: a host's link going down mid-job, and a remote rank killed. Each
  ends the whole job within the watchdog time (ADCME_MPI_TIMEOUT) with a
  message, and leaves no process behind in any host.

Needs root (namespaces, /etc/hosts); skipped with the reason otherwise (and
with ADCME_MPI_SKIP_HOSTS=1). The
hosts, links and /etc/hosts lines are removed after each test, also on failure.
Each test prints one line for the CI log (what crossed, how a fault ended).
"""

import os
import re
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pytest

from launcher import ROOT, launch, removing_new_mpich_segments
from test_examples import EXPECT
from mpiexec import DEFAULT, TOOLS, hosts_unavailable, mpiexec

sys.path.insert(0, TOOLS)
import netns_hosts  # noqa: E402

REASON = hosts_unavailable()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"{REASON}")

MPIEXEC = mpiexec(1)[0]
JOB = os.path.join(ROOT, "tests", "launch", "hosts_job.py")
LINK_JOB = os.path.join(ROOT, "tests", "launch", "link_job.py")
PER_HOST = 2
WATCHDOG = 10  # ADCME_MPI_TIMEOUT for the fault cases, seconds
# When a job spans nodes, MPICH's nonblocking reduce picks another algorithm
# than on one node, so float sums round differently from one host (by about
# 1e-16 relative). Pinning the algorithm pins the order; everything else
# (bcast, gather, scatter, p2p, halo, allreduce here) is bitwise by itself.
FIXED_ORDER = {"MPIR_CVAR_IREDUCE_INTRA_ALGORITHM": "sched_binomial"}


def report(capsys, line):
    with capsys.disabled():
        print(f"\n[hosts, {netns_hosts.mpi_kind(MPIEXEC)}] {line}", flush=True)


class Job:
    """A job across `hosts` whose output is read as it comes."""

    def __init__(self, hosts, argv, env=None, per_host=PER_HOST):
        full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
        self.proc = subprocess.Popen(
            hosts.command(MPIEXEC, per_host, argv),
            env=hosts.env(MPIEXEC, full_env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            cwd=tempfile.gettempdir(),
        )
        self.lines = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout))
        self.reader.start()

    @property
    def out(self):
        return "".join(self.lines)

    def wait_for(self, pattern, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline and self.proc.poll() is None:
            found = re.search(pattern, self.out)
            if found:
                return found
            time.sleep(0.1)
        return re.search(pattern, self.out)

    def wait(self, timeout):
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()
            code = "timeout"
        self.reader.join(10)
        return code


def test_results_bitwise_equal_to_one_host(tmp_path, capsys):
    one, two = tmp_path / "one_host", tmp_path / "two_hosts"
    one.mkdir()
    two.mkdir()
    single = launch(
        2 * PER_HOST, ["tests/launch/hosts_job.py", "results", str(one)], 300, FIXED_ORDER
    )
    assert single.code == 0, single
    start = time.time()
    with removing_new_mpich_segments(), netns_hosts.Hosts(2) as hosts:
        before = hosts.link_bytes()
        job = Job(hosts, [sys.executable, JOB, "results", str(two)], FIXED_ORDER)
        code = job.wait(300)
        crossed = hosts.link_bytes() - before
    assert code == 0, job.out[-4000:]
    assert hosts.orphans == {}, hosts.orphans
    compared, differ = 0, []
    for rank in range(2 * PER_HOST):
        a, b = np.load(one / f"rank{rank}.npz"), np.load(two / f"rank{rank}.npz")
        assert sorted(a.files) == sorted(b.files)
        for key in a.files:
            compared += 1
            if not np.array_equal(a[key], b[key]):
                differ.append(
                    f"rank {rank} {key}: max |diff| {np.max(np.abs(a[key] - b[key])):.3g}"
                )
    assert not differ, differ
    # the job moves ~8 MB; shared memory between the namespaces would leave kilobytes
    assert crossed > 1_000_000, f"only {crossed} bytes crossed the link"
    report(
        capsys,
        f"results: {compared} arrays on {2 * PER_HOST} ranks bitwise equal to one host; "
        f"{crossed} bytes crossed adcme-h1's link; {time.time() - start:.0f} s",
    )


def run_fault(capsys, name, inject, expected):
    """Start the allreduce loop on 2 hosts, wait for iteration 5, inject the
    fault; the job must end with `expected` in its output within the watchdog
    time plus a grace, and leave no process in any host."""
    with removing_new_mpich_segments(), netns_hosts.Hosts(2) as hosts:
        job = Job(hosts, [sys.executable, JOB, "loop"], {"ADCME_MPI_TIMEOUT": str(WATCHDOG)})
        assert job.wait_for(r"iteration 5\n", 120), job.out[-4000:]
        start = time.time()
        pattern = expected(inject(hosts, job))
        code = job.wait(WATCHDOG + 50)
        seconds = time.time() - start
        left = hosts.wait_for_no_processes(10)
    assert code not in (0, "timeout"), f"exit {code}:\n{job.out[-4000:]}"
    message = re.search(pattern, job.out)
    assert message, f"no {pattern!r} in:\n{job.out[-4000:]}"
    assert seconds < WATCHDOG + 20, f"{seconds:.1f} s:\n{job.out[-4000:]}"
    assert left == {}, f"processes left in the hosts: {left}"
    report(capsys, f"{name}: exit {code} after {seconds:.1f} s: {message.group(0)!r}")


def test_link_down_ends_job_within_watchdog(capsys):
    def pull_cable(hosts, job):
        hosts.set_link(hosts.names[1], up=False)

    # MPICH: the ranks' watchdog fires and aborts; Open MPI: mpirun loses its
    # daemon on the unreachable host first (TCP keepalive, netns_hosts.Hosts.env)
    expected = (
        r"adcme_mpi watchdog: mpi_allreduce \(rank \d of 4\) waited [\d.]+ s[^\n]*"
        r"|ORTE has lost communication with a remote daemon"
    )
    run_fault(capsys, "link of adcme-h2 down", pull_cable, lambda _: expected)


def test_killed_remote_rank_ends_job(capsys):
    def kill_rank_3(hosts, job):
        pid = int(job.wait_for(r"rank 3 on adcme-h2 pid (\d+)", 10).group(1))
        assert pid in hosts.processes()["adcme-h2"]
        os.kill(pid, 9)
        return pid

    def expected(pid):  # hydra names pid and host; mpirun rank, pid and host
        return (
            rf"PID {pid} RUNNING AT adcme-h2"
            rf"|process rank 3 with PID {pid} on node adcme-h2 exited on signal 9"
        )

    run_fault(capsys, "rank 3 on adcme-h2 killed (SIGKILL)", kill_rank_3, expected)


def test_shaped_link_delays_mpi_and_switches(capsys):
    """MPI traffic between hosts crosses the shaped link (tools/delay_link.c),
    which holds it for the delay asked for and moves on to the next delay on
    SIGUSR1; the router namespace is gone afterwards. One rank per host:
    idle ranks sharing the 2 cores would time-slice the round trips. The
    delay is long because Open MPI 4.1's TCP round trip here is 8 ms by
    itself (MPICH's: 50 us)."""
    delay_us = 20000
    with removing_new_mpich_segments(), netns_hosts.Hosts(2, delay_us=[0, delay_us]) as hosts:
        job = Job(hosts, [sys.executable, LINK_JOB, "2", "1"], per_host=1)
        code = job.wait(120)
    assert code == 0, f"exit {code}:\n{job.out[-4000:]}"
    trips = [float(t) for t in re.findall(r"delay \d: round trip (\d+) us", job.out)]
    assert len(trips) == 2, job.out[-4000:]
    assert trips[0] < delay_us, f"unshaped round trip {trips[0]} us:\n{job.out[-4000:]}"
    assert trips[1] >= 2 * delay_us, f"shaped round trip {trips[1]} us:\n{job.out[-4000:]}"
    assert "delay_link:" in hosts.delay_link_report and " 0 dropped" in hosts.delay_link_report
    assert netns_hosts.ROUTER not in netns_hosts.sh("ip", "netns", "list").stdout
    report(capsys, f"shaped link: MPI round trip {trips[0]:.0f} us, then {trips[1]:.0f} us at "
           f"{delay_us} us each way; {hosts.delay_link_report}")  # fmt: skip


def documented_commands():
    """Every `python tools/netns_hosts.py run ...` command README.md and
    docs/clusters.md show, as written."""
    found = set()
    for doc in ("README.md", os.path.join("docs", "clusters.md")):
        with open(os.path.join(ROOT, doc)) as f:
            found |= set(re.findall(r"^python tools/netns_hosts\.py run [^\n`#]*", f.read(), re.M))
    return sorted(command.strip() for command in found)


@pytest.mark.parametrize("command", documented_commands())
def test_documented_command(command, capsys):
    """Run as a user would, venv active, from the checkout."""
    args = command.split()
    args[0] = sys.executable
    n = int(re.search(r"--hosts (\d+)", command).group(1)) * int(
        re.search(r"--per-host (\d+)", command).group(1)
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    if MPIEXEC != DEFAULT:
        args[3:3] = ["--mpiexec", MPIEXEC]  # the suite's other MPI (as the command's note says)
    with removing_new_mpich_segments():
        proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    crossed = re.search(r"netns_hosts: (\d+) bytes crossed", out)
    assert crossed and int(crossed.group(1)) > 0, out[-4000:]
    script = next(a for a in args if a.startswith("examples/"))
    assert EXPECT[script](out, n), out[-4000:]
    report(capsys, f"{command}: exit 0, {crossed.group(1)} bytes crossed adcme-h1's link")
