"""Network namespaces made for a test, and running code inside one (needs root)."""

from __future__ import annotations

__all__ = ["NetworkNamespace", "network_namespace"]

import concurrent.futures
import ctypes
import json
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000


@dataclass(frozen=True, slots=True)
class NetworkNamespace:
    """A named network namespace (``ip netns``) made by :func:`network_namespace`.

    Attributes:
        name: its name under ``/run/netns``.
    """

    name: str

    def ip(self, *args: str) -> str:
        """Run ``ip -n NAME ARGS...`` and return its output.

        Raises:
            subprocess.CalledProcessError: when ``ip`` fails.
        """
        return subprocess.run(
            ["ip", "-n", self.name, *args], check=True, capture_output=True, text=True
        ).stdout

    def links(self) -> dict[str, dict[str, Any]]:
        """``ip -j link show`` of the namespace, by interface name."""
        return {link["ifname"]: link for link in json.loads(self.ip("-j", "link", "show"))}

    def run(self, work: Callable[[], T]) -> T:
        """Call ``work`` in a new thread that has joined the namespace; its result.

        Only the thread joins (``setns`` acts on the calling thread), so the test's
        own thread and event loop stay where they are.
        """

        def joined() -> T:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            finally:
                os.close(fd)
            return work()

        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(joined).result(timeout=60)


@contextmanager
def network_namespace() -> Iterator[NetworkNamespace]:
    """A fresh, empty network namespace (only ``lo``, down), deleted afterwards."""
    namespace = NetworkNamespace(f"nm-test-{uuid.uuid4().hex[:8]}")
    subprocess.run(["ip", "netns", "add", namespace.name], check=True)
    try:
        yield namespace
    finally:
        subprocess.run(["ip", "netns", "delete", namespace.name], check=True)
