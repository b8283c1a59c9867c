"""Several "hosts" on one machine, for running MPI jobs over a real (virtual)
network: each host is a network namespace with its own hostname and a veth
link to a bridge; an optional netem qdisc gives each link the latency and
rate you choose. Needs root. Everything it makes is removed again, also when
the job fails.

    python tools/netns_hosts.py run --hosts 2 --per-host 1 [--delay-us 10] [--rate-gbit 10] \\
        -- python script.py ...

runs `mpiexec -n hosts*per_host` across the hosts (MPICH/hydra: ssh launcher
replaced by tools/netns_launch.sh; UCX forced onto TCP over the hosts' eth0)
and prints the bytes that crossed the first host's link. Addresses are
10.213.0.0/24, used only inside the namespaces it creates (the bridge holds
10.213.0.254); /etc/hosts gets one line per host, tagged and removed after.
"""

import argparse
import os
import shutil
import subprocess
import sys

PREFIX = "adcme-h"
BRIDGE = "adcmebr0"
SUBNET = "10.213.0"
TAG = "# adcme_mpi netns host"
HERE = os.path.dirname(os.path.abspath(__file__))


class NoNetem(RuntimeError):
    """This kernel cannot delay or rate-limit the links (no netem qdisc)."""


def sh(*cmd, check=True):
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


def hosts(n):
    return [f"{PREFIX}{i}" for i in range(1, n + 1)]


def up(n, delay_us=0.0, rate_gbit=0.0):
    down(quiet=True)
    sh("ip", "link", "add", BRIDGE, "type", "bridge")
    sh("ip", "addr", "add", f"{SUBNET}.254/24", "dev", BRIDGE)
    sh("ip", "link", "set", BRIDGE, "up")
    lines = []
    for i, host in enumerate(hosts(n), start=1):
        sh("ip", "netns", "add", host)
        sh("ip", "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", host)
        sh("ip", "link", "set", host, "master", BRIDGE)
        sh("ip", "link", "set", host, "up")
        sh("ip", "-n", host, "addr", "add", f"{SUBNET}.{i}/24", "dev", "eth0")
        sh("ip", "-n", host, "link", "set", "eth0", "up")
        sh("ip", "-n", host, "link", "set", "lo", "up")
        if delay_us or rate_gbit:  # on each host's outgoing side: one-way latency delay_us
            netem = ["tc", "-n", host, "qdisc", "add", "dev", "eth0", "root", "netem"]
            if delay_us:
                netem += ["delay", f"{delay_us:g}us"]
            if rate_gbit:
                netem += ["rate", f"{rate_gbit:g}gbit"]
            result = sh(*netem, check=False)
            if result.returncode != 0:
                raise NoNetem(f"cannot shape the links: {' '.join(netem)}: {result.stderr.strip()}")
        lines.append(f"{SUBNET}.{i} {host} {TAG}")
    with open("/etc/hosts", "a") as f:
        f.write("\n".join(lines) + "\n")


def down(quiet=False):
    for line in sh("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        if name.startswith(PREFIX):
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


def link_bytes(host):
    """Bytes sent + received on the bridge side of `host`'s link."""
    total = 0
    for direction in ("rx_bytes", "tx_bytes"):
        with open(f"/sys/class/net/{host}/statistics/{direction}") as f:
            total += int(f.read())
    return total


def run(args, command):
    names = hosts(args.hosts)
    mpiexec = args.mpiexec or os.path.join(os.path.dirname(sys.executable), "mpiexec")
    try:
        up(args.hosts, args.delay_us, args.rate_gbit)
        before = link_bytes(names[0])
        env = dict(os.environ, UCX_TLS="tcp,self", UCX_NET_DEVICES="eth0")
        cmd = [
            mpiexec,
            "-launcher", "ssh",
            "-launcher-exec", os.path.join(HERE, "netns_launch.sh"),
            "-hosts", ",".join(f"{h}:{args.per_host}" for h in names),
            "-iface", BRIDGE,
            "-n", str(args.hosts * args.per_host),
            *command,
        ]  # fmt: skip
        proc = subprocess.run(cmd, env=env, timeout=args.timeout)
        print(
            f"netns_hosts: {link_bytes(names[0]) - before} bytes crossed {names[0]}'s link",
            flush=True,
        )
        return proc.returncode
    except subprocess.TimeoutExpired:
        print(f"netns_hosts: the job did not finish within {args.timeout} s", flush=True)
        return 124
    except NoNetem as err:
        print(f"netns_hosts: SKIPPED: {err}", flush=True)
        return 77
    finally:
        down()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    r = sub.add_parser("run")
    r.add_argument("--hosts", type=int, default=2)
    r.add_argument("--per-host", type=int, default=1)
    r.add_argument("--delay-us", type=float, default=0.0)
    r.add_argument("--rate-gbit", type=float, default=0.0)
    r.add_argument("--timeout", type=float, default=600)
    r.add_argument("--mpiexec", default=None)
    sub.add_parser("down")
    args, command = parser.parse_known_args()
    if os.geteuid() != 0 or not shutil.which("ip"):
        print("netns_hosts: SKIPPED: needs root and iproute2 (ip netns) to make hosts")
        return 0 if args.action == "down" else 77
    if args.action == "down":
        down()
        return 0
    if command and command[0] == "--":
        command = command[1:]
    return run(args, command)


if __name__ == "__main__":
    sys.exit(main())
