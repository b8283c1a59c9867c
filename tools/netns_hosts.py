"""Several "hosts" on one machine, for running MPI jobs over a real (virtual)
network: each host is a network namespace with its own hostname and a veth
link to a bridge. Needs root. Everything it makes is removed again, also when
the job fails.

A link of chosen latency and rate (--delay-us, --rate-gbit): the hosts' MPI
traffic then leaves by a second link, eth1 on 10.214.<i>.0/24, to a router
namespace that routes every packet between hosts through a TUN device served
by tools/delay_link.c (compiled on first use). That program holds each packet
for its time on a link of that rate plus the latency, in user space, because
this machine's kernel has no netem qdisc. Its own cost (about 10-20 us per
packet: two system calls and a wake-up) is there at --delay-us 0 as well, so
compare against that run, not against the unshaped bridge. With several
delays (--delay-us 0,1000) the link starts at the first and moves on to the
next on SIGUSR1 to the pid in the job's ADCME_DELAY_LINK_PID, so one job can
measure every latency round by round (benchmarks/scaling.py --link-delays-us).

    python tools/netns_hosts.py run --hosts 2 --per-host 2 [--mpiexec PATH] \\
        [--delay-us 10] [--rate-gbit 10] -- python script.py ...

runs the script on hosts*per_host ranks across the hosts, over TCP only:
- MPICH (hydra): ssh launcher replaced by tools/netns_launch.sh; the OFI
  network module over libfabric's TCP provider on the data link
  (`MPIR_CVAR_CH4_NETMOD=ofi FI_PROVIDER=tcp FI_TCP_IFACE=eth0`), because
  the wheel's default, UCX over TCP, leaves MPI_ANY_SOURCE receives across
  hosts unmatched (tools/any_source_check.py shows it; PETSc's set-up uses
  them). MPIR_CVAR_CH4_NETMOD=ucx in the caller's environment keeps UCX,
  forced onto TCP (`UCX_TLS=tcp,self UCX_NET_DEVICES=eth0`);
- Open MPI: `--mca plm_rsh_agent tools/netns_launch.sh`, `--mca btl tcp,self`,
  both BTL and runtime (OOB) traffic restricted to the hosts' subnet.
The MPI is recognised from `mpiexec --version`. It then prints the bytes that
crossed the first host's link, and any process still alive in a host after
the job (an orphan: reported, then killed).

Addresses are 10.213.0.0/24 and 10.214.0.0/16, used only inside the
namespaces it creates (the bridge holds 10.213.0.254); /etc/hosts gets one
line per host, tagged and removed after. As a library (the multi-host tests use it):

    with Hosts(2) as h:
        proc = subprocess.Popen(h.command(mpiexec, 2, argv), env=h.env(mpiexec))
        ...; h.set_link(h.names[1], up=False)   # a cable pulled mid-job
    h.orphans   # {host: [pid, ...]} found alive at exit (then killed)
"""

import argparse
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

PREFIX = "adcme-h"
BRIDGE = "adcmebr0"
SUBNET = "10.213.0"
ROUTER = "adcme-router"  # the namespace of the shaped links' router
DATA_NET = "10.214"  # host i's shaped link: 10.214.i.2, the router's end 10.214.i.1
TUN = "delay0"
TAG = "# adcme_mpi netns host"
HERE = os.path.dirname(os.path.abspath(__file__))
LAUNCHER = os.path.join(HERE, "netns_launch.sh")
SKIP = 77  # exit status of `run` when hosts cannot be made here (automake's "skipped")


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
    exit (processes still alive in them are recorded in `orphans` and killed).
    With delay_us (0 included; a number or a list of them) MPI traffic crosses
    the shaped links of the router namespace instead (see the module's
    docstring)."""

    def __init__(self, n, delay_us=None, rate_gbit=0.0):
        self.names = [f"{PREFIX}{i}" for i in range(1, n + 1)]
        self.shaped = delay_us is not None
        self.delays_us = list(delay_us) if isinstance(delay_us, (list, tuple)) else [delay_us]
        self.rate_gbit = rate_gbit
        self.data_device = "eth1" if self.shaped else "eth0"
        self.orphans = {}

    def __enter__(self):
        try:
            self._up()
        except BaseException:
            self._stop_delay_link()
            down()
            raise
        return self

    def __exit__(self, *exc):
        self.orphans = self.processes()
        self._stop_delay_link()
        down()  # kills what is still alive in the hosts, then removes them
        return False

    def _stop_delay_link(self):
        """Stop delay_link (keeping its report) and remove its binary, also
        when the hosts failed to come up."""
        link = getattr(self, "delay_link", None)
        if link is not None:
            link.terminate()
            try:
                self.delay_link_report = link.communicate(timeout=10)[0].strip()
            except subprocess.TimeoutExpired:
                link.kill()
                link.wait()
        binary = getattr(self, "delay_link_binary", None)
        if binary is not None:
            shutil.rmtree(os.path.dirname(binary), ignore_errors=True)

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
            lines.append(f"{SUBNET}.{i} {host} {TAG}")
        with open("/etc/hosts", "a") as f:
            f.write("\n".join(lines) + "\n")
        if self.shaped:
            self._shaped_links()

    def _shaped_links(self):
        """Host i's eth1 (10.214.i.2) to the router's to-hi (10.214.i.1); the
        router sends what arrives from a host into the TUN device, and what
        delay_link writes back out of it on to the destination host."""
        sh("ip", "netns", "add", ROUTER)
        in_router = ["ip", "netns", "exec", ROUTER]
        sh(*in_router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for scope in ("all", "default"):  # packets from the TUN device carry foreign sources
            sh(*in_router, "sysctl", "-qw", f"net.ipv4.conf.{scope}.rp_filter=0")
        sh("ip", "-n", ROUTER, "link", "set", "lo", "up")
        sh("ip", "-n", ROUTER, "tuntap", "add", "dev", TUN, "mode", "tun")
        sh("ip", "-n", ROUTER, "link", "set", TUN, "up")
        sh("ip", "-n", ROUTER, "route", "add", "default", "dev", TUN, "table", "100")
        for i, host in enumerate(self.names, start=1):
            end = f"to-h{i}"
            sh("ip", "link", "add", end, "netns", ROUTER, "type", "veth",
               "peer", "name", "eth1", "netns", host)  # fmt: skip
            sh("ip", "-n", ROUTER, "addr", "add", f"{DATA_NET}.{i}.1/24", "dev", end)
            sh("ip", "-n", ROUTER, "link", "set", end, "up")
            sh("ip", "-n", ROUTER, "rule", "add", "iif", end, "lookup", "100")
            sh("ip", "-n", host, "addr", "add", f"{DATA_NET}.{i}.2/24", "dev", "eth1")
            sh("ip", "-n", host, "link", "set", "eth1", "up")
            sh("ip", "-n", host, "route", "add", f"{DATA_NET}.0.0/16", "via", f"{DATA_NET}.{i}.1")
        wait_until_up([(host, "eth1") for host in self.names])
        self.delay_link_binary = binary = compiled_delay_link()
        self.delay_link = subprocess.Popen(
            [
                *in_router,
                binary,
                TUN,
                ",".join(f"{d:g}" for d in self.delays_us),
                f"{self.rate_gbit:g}",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        ready = self.delay_link.stdout.readline()
        if "up" not in ready:
            raise RuntimeError(f"netns_hosts: delay_link did not start: {ready!r}")

    def command(self, mpiexec, per_host, argv):
        """The launch command for `argv` on per_host ranks on every host, over TCP."""
        n = len(self.names) * per_host
        slots = ",".join(f"{h}:{per_host}" for h in self.names)
        if mpi_kind(mpiexec) == "openmpi":
            subnet = f"{SUBNET}.0/24"
            data_subnet = f"{DATA_NET}.0.0/16" if self.shaped else subnet
            return [
                mpiexec,
                "--mca", "plm_rsh_agent", LAUNCHER,
                "--mca", "btl", "tcp,self",
                "--mca", "btl_tcp_if_include", data_subnet,
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
        """Environment for the launch: MPICH's OFI (or, if the caller chose it,
        UCX) over TCP on the data link (eth0, or eth1 when shaped); Open
        MPI's runtime noticing a lost host within seconds."""
        env = dict(os.environ if base is None else base)
        if self.shaped:
            env["ADCME_DELAY_LINK_PID"] = str(self.delay_link.pid)
        if mpi_kind(mpiexec) == "mpich":
            # UCX over TCP leaves MPI_ANY_SOURCE receives across hosts
            # unmatched (MPICH 5.0.2's wheel; tools/any_source_check.py):
            # OFI's TCP provider unless the caller chose a network module
            env.setdefault("MPIR_CVAR_CH4_NETMOD", "ofi")
            env.update(FI_PROVIDER="tcp", FI_TCP_IFACE=self.data_device)
            env.update(UCX_TLS="tcp,self", UCX_NET_DEVICES=self.data_device)
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
        """Bytes sent + received on `host`'s (default: the first's) data link."""
        host = host or self.names[0]
        out = sh("ip", "-n", host, "-j", "-s", "link", "show", self.data_device).stdout
        stats = json.loads(out)[0]["stats64"]
        return stats["rx"]["bytes"] + stats["tx"]["bytes"]

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


def wait_until_up(links, seconds=10):
    """Wait for each (namespace, device) to be operationally up: a veth end
    reports its carrier a moment after both ends are set up, and UCX, asked
    for a device that is not up yet, refuses it."""
    deadline = time.time() + seconds
    for host, device in links:
        while True:
            out = sh("ip", "-n", host, "-j", "link", "show", device).stdout
            if json.loads(out)[0].get("operstate") == "UP":
                break
            if time.time() > deadline:
                raise RuntimeError(f"netns_hosts: {device} in {host} is not up after {seconds} s")
            time.sleep(0.05)


def compiled_delay_link():
    """tools/delay_link.c, compiled into a fresh temporary folder."""
    folder = tempfile.mkdtemp(prefix="adcme-delay-link-")
    binary = os.path.join(folder, "delay_link")
    sh("gcc", "-O2", "-o", binary, os.path.join(HERE, "delay_link.c"))
    return binary


def down(quiet=False):
    """Kill what still runs in the hosts and the router, then remove every
    host, link, the router, the bridge and the /etc/hosts lines this tool made."""
    for line in sh("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        if name.startswith(PREFIX) or name == ROUTER:
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
    delay_us = args.delay_us
    if delay_us is not None:
        delay_us = [float(d) for d in delay_us.split(",")]
    elif args.rate_gbit:
        delay_us = 0.0
    hosts = Hosts(args.hosts, delay_us, args.rate_gbit)
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
    if hosts.shaped:
        print(getattr(hosts, "delay_link_report", "netns_hosts: delay_link gave no report"))
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
    r.add_argument(
        "--delay-us",
        default=None,
        help="shape the links: this one-way latency, or several (0,1000) switched by SIGUSR1",
    )
    r.add_argument("--rate-gbit", type=float, default=0.0, help="with --delay-us; 0: unlimited")
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
