"""Hosts on a network of their own, and partitions between them: real packets dropped.

A bridge in the test's namespace (198.18.N.1/24, the benchmarking range) and, per host, a
network namespace joined to it by a veth pair, with its own address. ``partition(host)``
drops every packet on both ends of that host's link (a token bucket smaller than any
packet: this kernel has no netem), so its peers see silence, not a refused connection, as
when a node is cut off; ``heal(host)`` lets them through again. Names carry a random token
and everything is deleted on ``close()``. Needs root (CI runs as root)."""

from __future__ import annotations

import random
import secrets
import subprocess
from dataclasses import dataclass

# Every packet dropped: a bucket of 10 bytes never holds one.
_DROP_ALL = ["root", "tbf", "rate", "1kbit", "burst", "10", "limit", "10"]
# A slow link: packets queue up to 200 ms behind a low rate (no netem here for delay itself).
_SLOW = ["root", "tbf", "rate", "256kbit", "burst", "4kb", "latency", "200ms"]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@dataclass(frozen=True)
class Host:
    namespace: str
    address: str
    outer_link: str  # the veth end on the bridge
    inner_link: str  # the veth end inside the namespace

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the host's namespace (ip netns exec execs it: the PID is the command's)."""
        return ["ip", "netns", "exec", self.namespace, *argv]


class IsolatedNetwork:
    def __init__(self) -> None:
        self._token = secrets.token_hex(3)
        self._subnet = f"198.18.{random.randint(1, 254)}"
        self.bridge = f"rsdb{self._token}"
        self.hosts: list[Host] = []
        self._partitioned: set[Host] = set()
        _ip("link", "add", self.bridge, "type", "bridge")
        try:
            _ip("addr", "add", f"{self._subnet}.1/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
        except BaseException:
            self.close()
            raise

    @property
    def gateway(self) -> str:
        """The test's own address on the network (where the services connect from)."""
        return f"{self._subnet}.1"

    def add_host(self) -> Host:
        number = len(self.hosts)
        host = Host(f"rsd-{self._token}-{number}", f"{self._subnet}.{10 + number}",
                    f"rsdo{self._token}{number}", f"rsdi{self._token}{number}")
        self.hosts.append(host)
        _ip("netns", "add", host.namespace)
        _ip("link", "add", host.outer_link, "type", "veth", "peer", "name", host.inner_link)
        _ip("link", "set", host.inner_link, "netns", host.namespace)
        _ip("link", "set", host.outer_link, "master", self.bridge)
        _ip("link", "set", host.outer_link, "up")
        _ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", host.inner_link)
        _ip("-n", host.namespace, "link", "set", host.inner_link, "up")
        _ip("-n", host.namespace, "link", "set", "lo", "up")
        return host

    def partition(self, host: Host) -> None:
        self._shape(host, _DROP_ALL)

    def slow(self, host: Host) -> None:
        """The host's link slowed (256 kbit/s each way, up to 200 ms queued) until ``heal``."""
        self._shape(host, _SLOW)

    def _shape(self, host: Host, qdisc: list[str]) -> None:
        subprocess.run(["tc", "qdisc", "add", "dev", host.outer_link, *qdisc], check=True, timeout=10)
        subprocess.run(host.command(["tc", "qdisc", "add", "dev", host.inner_link, *qdisc]), check=True,
                       timeout=10)
        self._partitioned.add(host)

    def heal(self, host: Host) -> None:
        subprocess.run(["tc", "qdisc", "del", "dev", host.outer_link, "root"], check=True, timeout=10)
        subprocess.run(host.command(["tc", "qdisc", "del", "dev", host.inner_link, "root"]), check=True,
                       timeout=10)
        self._partitioned.discard(host)

    def close(self) -> None:
        """Deletes the namespaces (their veth ends go with them) and the bridge; call after
        every process inside them has stopped."""
        for host in self.hosts:
            subprocess.run(["ip", "link", "del", host.outer_link], capture_output=True, timeout=10)
            subprocess.run(["ip", "netns", "del", host.namespace], capture_output=True, timeout=10)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, timeout=10)
