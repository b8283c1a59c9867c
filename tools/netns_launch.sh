#!/usr/bin/env bash
# Used by mpiexec in place of ssh (tools/netns_hosts.py): run a command on a
# "host", i.e. inside network namespace HOST with its own hostname.
#   netns_launch.sh [ssh options such as -x] HOST COMMAND...
while [[ $1 == -* ]]; do shift; done  # hydra passes ssh's -x first
host=$1
shift
exec ip netns exec "$host" unshare --uts bash -c "hostname $host; $*"
