"""A small LAN of network namespaces, for team mode across hosts that reach each other
over veth pairs rather than loopback (iproute2; needs root).

A namespace `<tag>-lan` holds a bridge, so the bridged traffic meets that namespace's
empty firewall rather than the machine's; each host is a namespace `<tag>-<name>` with a
veth into the bridge, and this process's own namespace joins the bridge as one more host,
`gateway`, so it reaches every host and every host reaches it.

    with Lan.temporary(["server", "worker-a"]) as lan:
        lan.address("server")        # 10.78.0.1
        lan.prefix("worker-a")       # ["ip", "netns", "exec", "tx1234-worker-a"]
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

SUBNET = "10.78.0"
GATEWAY = "gateway"


def can_make_namespaces() -> str | None:
    """Why this process cannot build a `Lan`, or None when it can."""
    if shutil.which("ip") is None:
        return "no `ip` command (Debian's iproute2)"
    if os.geteuid() != 0:
        return "network namespaces need root"
    return None


@dataclass(frozen=True)
class Lan:
    """Hosts on one /24: `names[i]` at .(i+1); this process's namespace at .254."""

    tag: str
    names: tuple[str, ...]

    @classmethod
    @contextmanager
    def temporary(cls, names: list[str]) -> Iterator[Lan]:
        """Build the namespaces, bridge and links; remove them all on exit."""
        lan = cls(tag=f"tx{os.getpid() % 100_000}", names=tuple(names))
        try:
            lan._build()
            yield lan
        finally:
            lan._tear_down()

    def address(self, name: str) -> str:
        if name == GATEWAY:
            return f"{SUBNET}.254"
        return f"{SUBNET}.{self.names.index(name) + 1}"

    def namespace(self, name: str) -> str:
        return f"{self.tag}-{name}"

    def prefix(self, name: str) -> list[str]:
        """The argv prefix that runs a command on host `name`."""
        return ["ip", "netns", "exec", self.namespace(name)]

    def _build(self) -> None:
        lan = self.namespace("lan")
        _ip("netns", "add", lan)
        _ip("-n", lan, "link", "add", "br0", "type", "bridge")
        _ip("-n", lan, "link", "set", "br0", "up")
        for index, name in enumerate((*self.names, GATEWAY)):
            inside, outside = f"{self.tag}h{index}", f"{self.tag}p{index}"
            _ip("link", "add", inside, "type", "veth", "peer", "name", outside)
            _ip("link", "set", outside, "netns", lan)
            _ip("-n", lan, "link", "set", outside, "master", "br0", "up")
            if name != GATEWAY:
                host = self.namespace(name)
                _ip("netns", "add", host)
                _ip("link", "set", inside, "netns", host)
                _ip("-n", host, "link", "set", "lo", "up")
                _ip("-n", host, "addr", "add", f"{self.address(name)}/24", "dev", inside)
                _ip("-n", host, "link", "set", inside, "up")
            else:
                _ip("addr", "add", f"{self.address(name)}/24", "dev", inside)
                _ip("link", "set", inside, "up")

    def _tear_down(self) -> None:
        """Deleting a namespace deletes the veths in it, and so their peers."""
        for name in (*self.names, "lan"):
            subprocess.run(["ip", "netns", "del", self.namespace(name)], capture_output=True)
        subprocess.run(["ip", "link", "del", f"{self.tag}h{len(self.names)}"], capture_output=True)


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
