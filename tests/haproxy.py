"""A real HAProxy for the tests, started as a child process with its backends.

:class:`HaproxyRig` runs two TCP backend servers in threads: ``host`` stands for this
node and ``other`` for the rest of the pool. Each greets a connection with its name and a
newline, records the hit, and keeps the connection open until the client closes it (a
long-lived session HAProxy counts in ``scur``). HAProxy (``haproxy -db -f <cfg>``, the
config checked with ``haproxy -c`` first) balances a frontend on an ephemeral loopback
port round-robin over backend ``web`` = ``web/host`` + ``web/other``, without health
checks. Its runtime API listens at level admin on a unix socket (:attr:`HaproxyRig.socket`)
and on a loopback TCP port (:attr:`HaproxyRig.tcp`), and at level user on
:attr:`HaproxyRig.user_socket` (which may not change anything). HAProxy is stopped by
its PID, and dies with the test process (``PR_SET_PDEATHSIG``).

Fixture: ``haproxy_rig`` (import ``haproxy_rig_fixture`` to register it in a module).
"""

from __future__ import annotations

__all__ = ["HAPROXY", "HaproxyRig", "haproxy_rig_fixture"]

import contextlib
import shutil
import socket
import socketserver
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.brokers import HOST, _die_with_parent, free_port

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
_WAIT = 30.0


class _Backend(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, name: str) -> None:
        self.name = name
        self.hits = 0
        self.lock = threading.Lock()
        super().__init__((HOST, 0), _Greeter)

    @property
    def port(self) -> int:
        port: int = self.server_address[1]
        return port


class _Greeter(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server = self.server
        assert isinstance(server, _Backend)
        with server.lock:
            server.hits += 1
        self.request.sendall(server.name.encode() + b"\n")
        with contextlib.suppress(OSError):
            while self.request.recv(1024):
                pass


class HaproxyRig:
    """HAProxy with backend ``web`` of servers ``host`` (this node) and ``other``.

    Args:
        directory: where the config, sockets and log go.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        # A unix socket path has at most 107 bytes; a test's tmp_path can be longer.
        self._sockets = Path(tempfile.mkdtemp(prefix="nm-haproxy-"))
        self.socket = str(self._sockets / "admin.sock")
        self.user_socket = str(self._sockets / "user.sock")
        self.frontend = free_port()
        self.tcp = f"{HOST}:{free_port()}"
        self.backends = {name: _Backend(name) for name in ("host", "other")}
        self._threads = [
            threading.Thread(target=b.serve_forever, name=f"backend-{n}", daemon=True)
            for n, b in self.backends.items()
        ]
        self.config = directory / "haproxy.cfg"
        self.config.write_text(self._config(), encoding="utf-8")
        self.proc: subprocess.Popen[bytes] | None = None

    def _config(self) -> str:
        servers = "".join(
            f"    server {name} {HOST}:{backend.port}\n" for name, backend in self.backends.items()
        )
        return (
            "global\n"
            f"    stats socket {self.socket} mode 600 level admin\n"
            f"    stats socket {self.user_socket} mode 600 level user\n"
            f"    stats socket ipv4@{self.tcp} level admin\n"
            "defaults\n"
            "    mode tcp\n"
            "    timeout connect 5s\n"
            "    timeout client 5m\n"
            "    timeout server 5m\n"
            "frontend fe\n"
            f"    bind {HOST}:{self.frontend}\n"
            "    default_backend web\n"
            "backend web\n"
            "    balance roundrobin\n"
            f"{servers}"
        )

    def start(self) -> None:
        """Check the config, start the backends and HAProxy; wait until its API answers."""
        check = subprocess.run(
            [HAPROXY, "-c", "-f", str(self.config)], capture_output=True, text=True, check=False
        )
        assert check.returncode == 0, check.stdout + check.stderr
        with (self.directory / "haproxy.log").open("wb") as log:
            # Started before the backends' threads: preexec_fn runs in a forked child.
            self.proc = subprocess.Popen(
                [HAPROXY, "-db", "-f", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,  # noqa: PLW1509  (no other thread runs yet)
            )
        for thread in self._threads:
            thread.start()
        deadline = time.monotonic() + _WAIT
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.directory / "haproxy.log").read_text()
            with contextlib.suppress(OSError):
                if "Name: HAProxy" in self.ask("show info"):
                    return
            time.sleep(0.05)
        raise AssertionError(f"HAProxy's stats socket did not answer within {_WAIT:g}s")

    def stop(self) -> None:
        """Stop HAProxy by its PID and the backends."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for backend, thread in zip(self.backends.values(), self._threads, strict=True):
            if thread.is_alive():
                backend.shutdown()
            backend.server_close()
        shutil.rmtree(self._sockets, ignore_errors=True)

    def ask(self, command: str) -> str:
        """One runtime API command over the admin unix socket, read independently of the agent."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(self.socket)
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def status(self, server: str = "host") -> str:
        """``show stat``'s status column for ``web/<server>``: UP, DRAIN, MAINT."""
        lines = self.ask("show stat").splitlines()
        header = lines[0].removeprefix("# ").split(",")
        for line in lines[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("pxname") == "web" and row.get("svname") == server:
                return row["status"]
        raise AssertionError(f"no web/{server} in show stat")

    def admin_state(self, server: str = "host") -> int:
        """``srv_admin_state`` of ``web/<server>`` from ``show servers state web``."""
        lines = self.ask("show servers state web").splitlines()
        header = next(ln[2:].split() for ln in lines if ln.startswith("# "))
        for line in lines[1:]:
            row = dict(zip(header, line.split(), strict=False))
            if row.get("srv_name") == server:
                return int(row["srv_admin_state"])
        raise AssertionError(f"no web/{server} in show servers state")

    def connect(self) -> str:
        """Open a connection through the frontend; the name of the server that took it."""
        sock, name = self.hold()
        sock.close()
        return name

    def hold(self) -> tuple[socket.socket, str]:
        """A connection through the frontend, left open (a current session) until closed,
        and the name of the server that took it."""
        sock = socket.create_connection((HOST, self.frontend), timeout=10)
        name = b""
        while not name.endswith(b"\n"):
            chunk = sock.recv(64)
            if not chunk:
                sock.close()
                raise AssertionError(f"the connection closed after {name!r}")
            name += chunk
        return sock, name.decode().strip()

    def spread(self, count: int) -> dict[str, int]:
        """Open ``count`` connections one after another; how many each server took."""
        seen = dict.fromkeys(self.backends, 0)
        for _ in range(count):
            seen[self.connect()] += 1
        return seen


@pytest.fixture(name="haproxy_rig")
def haproxy_rig_fixture(tmp_path: Path) -> Iterator[HaproxyRig]:
    """A started :class:`HaproxyRig`; stopped after the test."""
    if not Path(HAPROXY).exists():
        pytest.fail("haproxy is not installed (make apt-test installs it)")
    rig = HaproxyRig(tmp_path)
    try:
        rig.start()
        yield rig
    finally:
        rig.stop()
