"""Several "hosts" on one machine, for running MPI jobs over a real (virtual)
network: each host is a network namespace with its own hostname and a veth
link to a bridge; an optional netem qdisc gives each link the latency and
rate you choose. Needs root. Everything it makes is removed again, also when
the job fails.

    python tools/netns_hosts.py run --hosts 2 --per-host 2 [--mpiexec PATH] \\
        [--delay-us 10] [--rate-gbit 10] -- python script.py ...

runs the script on hosts*per_host ranks across the hosts, over TCP only:
- MPICH (hydra): ssh launcher replaced by tools/netns_launch.sh, UCX forced
  onto TCP (`UCX_TLS=tcp,self UCX_NET_DEVICES=eth0`);
- Open MPI: `--mca plm_rsh_agent tools/netns_launch.sh`, `--mca btl tcp,self`,
  both BTL and runtime (OOB) traffic restricted to the hosts' subnet.
The MPI is recognised from `mpiexec --version`. It then prints the bytes that
crossed the first host's link, and any process still alive in a host after
the job (an orphan: reported, then killed).

Addresses are 10.213.0.0/24, used only inside the namespaces it creates (the
bridge holds 10.213.0.254); /etc/hosts gets one line per host, tagged and
removed after. As a library (the multi-host tests use it):

    with Hosts(2) as h:
        proc = subprocess.Popen(h.command(mpiexec, 2, argv), env=h.env(mpiexec))
        ...; h.set_link(h.names[1], up=False)   # a cable pulled mid-job
    h.orphans   # {host: [pid, ...]} found alive at exit (then killed)
"""

import argparse
import functools
import os
import shutil
import signal
import subprocess
import sys
import time

PREFIX = "adcme-h"
BRIDGE = "adcmebr0"
SUBNET = "10.213.0"
TAG = "# adcme_mpi netns host"
HERE = os.path.dirname(os.path.abspath(__file__))
LAUNCHER = os.path.join(HERE, "netns_launch.sh")
SKIP = 77  # exit status of `run` when hosts cannot be made here (automake's "skipped")


class NoNetem(RuntimeError):
    """This kernel cannot delay or rate-limit the links (no netem qdisc)."""


def sh(*cmd, check=True):
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


def why_not_available():
    """None if hosts can be made here, else one line saying why not."""
    if os.geteuid() != 0:
        return "making hosts (network namespaces) needs root"
    if not shutil.which("ip"):
        return "making hosts needs iproute2's `ip` command"
    return None


@functools.cache
def mpi_kind(mpiexec):
    """'mpich' (hydra) or 'openmpi', from `mpiexec --version`."""
    out = subprocess.run([mpiexec, "--version"], capture_output=True, text=True, timeout=60).stdout
    if "Open MPI" in out or "OpenRTE" in out:
        return "openmpi"
    if "HYDRA" in out or "MPICH" in out:
        return "mpich"
    raise RuntimeError(f"{mpiexec}: neither MPICH/hydra nor Open MPI: {out[:200]!r}")


class Hosts:
    """n hosts adcme-h1..adcme-hn at 10.213.0.1..n, made on entry, removed on
    exit (processes still alive in them are recorded in `orphans` and killed)."""

    def __init__(self, n, delay_us=0.0, rate_gbit=0.0):
        self.names = [f"{PREFIX}{i}" for i in range(1, n + 1)]
        self.delay_us, self.rate_gbit = delay_us, rate_gbit
        self.orphans = {}

    def __enter__(self):
        try:
            self._up()
        except BaseException:
            down()
            raise
        return self

    def __exit__(self, *exc):
        self.orphans = self.processes()
        down()  # kills what is still alive in the hosts, then removes them
        return False

    def _up(self):
        down(quiet=True)
        sh("ip", "link", "add", BRIDGE, "type", "bridge")
        sh("ip", "addr", "add", f"{SUBNET}.254/24", "dev", BRIDGE)
        sh("ip", "link", "set", BRIDGE, "up")
        lines = []
        for i, host in enumerate(self.names, start=1):
            sh("ip", "netns", "add", host)
            sh("ip", "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", host)
            sh("ip", "link", "set", host, "master", BRIDGE)
            sh("ip", "link", "set", host, "up")
            sh("ip", "-n", host, "addr", "add", f"{SUBNET}.{i}/24", "dev", "eth0")
            sh("ip", "-n", host, "link", "set", "eth0", "up")
            sh("ip", "-n", host, "link", "set", "lo", "up")
            if self.delay_us or self.rate_gbit:  # each host's outgoing side
                netem = ["tc", "-n", host, "qdisc", "add", "dev", "eth0", "root", "netem"]
                if self.delay_us:
                    netem += ["delay", f"{self.delay_us:g}us"]
                if self.rate_gbit:
                    netem += ["rate", f"{self.rate_gbit:g}gbit"]
                result = sh(*netem, check=False)
                if result.returncode != 0:
                    raise NoNetem(
                        f"cannot shape the links: {' '.join(netem)}: {result.stderr.strip()}"
                    )
            lines.append(f"{SUBNET}.{i} {host} {TAG}")
        with open("/etc/hosts", "a") as f:
            f.write("\n".join(lines) + "\n")

    def command(self, mpiexec, per_host, argv):
        """The launch command for `argv` on per_host ranks on every host, over TCP."""
        n = len(self.names) * per_host
        slots = ",".join(f"{h}:{per_host}" for h in self.names)
        if mpi_kind(mpiexec) == "openmpi":
            subnet = f"{SUBNET}.0/24"
            return [
                mpiexec,
                "--mca", "plm_rsh_agent", LAUNCHER,
                "--mca", "btl", "tcp,self",
                "--mca", "btl_tcp_if_include", subnet,
                "--mca", "oob_tcp_if_include", subnet,
                "--host", slots,
                "-n", str(n),
                *argv,
            ]  # fmt: skip
        return [
            mpiexec,
            "-launcher", "ssh",
            "-launcher-exec", LAUNCHER,
            "-hosts", slots,
            "-iface", BRIDGE,
            "-n", str(n),
            *argv,
        ]  # fmt: skip

    def env(self, mpiexec, base=None):
        """Environment for the launch: MPICH's UCX over TCP on eth0; Open MPI's
        runtime noticing a lost host within seconds."""
        env = dict(os.environ if base is None else base)
        if mpi_kind(mpiexec) == "mpich":
            env.update(UCX_TLS="tcp,self", UCX_NET_DEVICES="eth0")
        else:
            # mpirun learns that a node is gone only through TCP keepalive
            # (default: 300 s idle + 9 probes 20 s apart); with a link down
            # and the job aborting, it otherwise waits for the lost daemon
            # until TCP gives up (minutes). Probe every second instead.
            env.update(
                OMPI_MCA_oob_tcp_keepalive_time="1",
                OMPI_MCA_oob_tcp_keepalive_intvl="1",
                OMPI_MCA_oob_tcp_keepalive_probes="3",
            )
        return env

    def link_bytes(self, host=None):
        """Bytes sent + received on the bridge side of `host`'s link (default: the first)."""
        host = host or self.names[0]
        total = 0
        for direction in ("rx_bytes", "tx_bytes"):
            with open(f"/sys/class/net/{host}/statistics/{direction}") as f:
                total += int(f.read())
        return total

    def set_link(self, host, up):
        """Pull (up=False) or plug back `host`'s cable: its veth on the bridge side."""
        sh("ip", "link", "set", host, "up" if up else "down")

    def processes(self):
        """{host: [pid, ...]} of the processes alive in each host's namespace."""
        found = {}
        for host in self.names:
            pids = pids_in(host)
            if pids:
                found[host] = pids
        return found

    def wait_for_no_processes(self, seconds):
        """Give the hosts' processes `seconds` to exit; returns those still alive."""
        deadline = time.time() + seconds
        while self.processes() and time.time() < deadline:
            time.sleep(0.2)
        return self.processes()


def pids_in(host):
    """The processes alive in `host`'s network namespace."""
    return [int(p) for p in sh("ip", "netns", "pids", host, check=False).stdout.split()]


def down(quiet=False):
    """Kill what still runs in the hosts, then remove every host, link, the
    bridge and the /etc/hosts lines this tool made."""
    for line in sh("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        if name.startswith(PREFIX):
            for pid in pids_in(name):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            sh("ip", "netns", "delete", name, check=False)
    for line in sh("ip", "-o", "link", "show", check=False).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        if name.startswith(PREFIX) or name == BRIDGE:
            sh("ip", "link", "delete", name, check=False)
    try:
        with open("/etc/hosts") as f:
            kept = [line for line in f if TAG not in line]
        with open("/etc/hosts", "w") as f:
            f.writelines(kept)
    except OSError as err:
        if not quiet:
            print(f"netns_hosts: could not clean /etc/hosts: {err}", file=sys.stderr)


def run(args, argv):
    mpiexec = args.mpiexec or os.path.join(os.path.dirname(sys.executable), "mpiexec")
    hosts = Hosts(args.hosts, args.delay_us, args.rate_gbit)
    try:
        with hosts:
            before = hosts.link_bytes()
            cmd = hosts.command(mpiexec, args.per_host, argv)
            print(f"netns_hosts: {mpi_kind(mpiexec)} over TCP: {' '.join(cmd)}", flush=True)
            try:
                code = subprocess.run(cmd, env=hosts.env(mpiexec), timeout=args.timeout).returncode
            except subprocess.TimeoutExpired:
                print(f"netns_hosts: the job did not finish within {args.timeout} s", flush=True)
                code = 124
            print(
                f"netns_hosts: {hosts.link_bytes() - before} bytes crossed {hosts.names[0]}'s link",
                flush=True,
            )
    except NoNetem as err:
        print(f"netns_hosts: SKIPPED: {err}", flush=True)
        return SKIP
    if hosts.orphans:
        print(f"netns_hosts: processes left after the job (killed): {hosts.orphans}", flush=True)
        code = code or 1
    return code


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    r = sub.add_parser("run")
    r.add_argument("--hosts", type=int, default=2)
    r.add_argument("--per-host", type=int, default=1)
    r.add_argument("--delay-us", type=float, default=0.0)
    r.add_argument("--rate-gbit", type=float, default=0.0)
    r.add_argument("--timeout", type=float, default=600)
    r.add_argument("--mpiexec", default=None, help="default: the mpiexec next to this Python")
    sub.add_parser("down")
    args, argv = parser.parse_known_args()
    reason = why_not_available()
    if reason:
        print(f"netns_hosts: SKIPPED: {reason}")
        return 0 if args.action == "down" else SKIP
    if args.action == "down":
        down()
        return 0
    if argv and argv[0] == "--":
        argv = argv[1:]
    return run(args, argv)


if __name__ == "__main__":
    sys.exit(main())
