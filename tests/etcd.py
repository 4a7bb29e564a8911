"""A real etcd for the tests, started as a child process on ephemeral loopback ports.

:class:`EtcdServer` runs Debian's ``etcd`` (3.4) as a one-member cluster with its data
directory under the test's tmp dir, waits until ``GET /health`` says true, and stops it
by its PID. The ``etcd`` fixture yields a started server; the system etcd and port 2379
are never used. Register it per module by importing :func:`etcd_fixture`.
"""

from __future__ import annotations

__all__ = [
    "BUDGET",
    "EtcdPKI",
    "EtcdServer",
    "SlotWatch",
    "budget_config",
    "etcd_fixture",
    "etcd_get",
]

import asyncio
import base64
import ipaddress
import json
import shutil
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from agent.config import FleetBudgetConfig
from tests.brokers import (
    HOST,
    _builder,
    _die_with_parent,
    _make_ca,
    _write_cert,
    _write_key,
    free_port,
)
from tests.fleet_holder import PREFIX

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"


class EtcdError(RuntimeError):
    """Raised when the test etcd does not start or stop."""


def etcd_get(
    url: str,
    path: str,
    body: dict[str, Any],
    *,
    timeout: float = 5.0,
    context: ssl.SSLContext | None = None,
) -> Any:
    """POST ``body`` to etcd's JSON gateway at ``url + path``; the decoded reply."""
    request = urllib.request.Request(  # noqa: S310 - loopback only
        url + path, data=json.dumps(body).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=timeout, context=context) as resp:  # noqa: S310
        return json.loads(resp.read().decode().splitlines()[0])


def b64(text: str) -> str:
    """Base64 of ``text``, as the gateway spells keys."""
    return base64.b64encode(text.encode()).decode()


@dataclass(frozen=True, slots=True)
class EtcdPKI:
    """Throwaway certificates for an https etcd, as PEM files.

    The server certificate is valid for ``127.0.0.1`` and for client auth too: etcd
    3.4's JSON gateway dials its own gRPC server presenting it, and
    ``--client-cert-auth`` checks it like any client's.
    """

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def create(cls, directory: Path) -> EtcdPKI:
        """Mint a CA, the server's and a client's certificate under ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        pki = cls(
            *(
                directory / name
                for name in ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")
            )
        )
        ca = _make_ca("nodemedic etcd test CA")
        _write_cert(pki.ca_cert, ca.cert)
        for cert_path, key_path, usages, names in (
            (
                pki.server_cert,
                pki.server_key,
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
                [x509.IPAddress(ipaddress.ip_address(HOST))],
            ),
            (pki.client_cert, pki.client_key, [ExtendedKeyUsageOID.CLIENT_AUTH], []),
        ):
            key = ec.generate_private_key(ec.SECP256R1())
            builder = _builder(cert_path.stem, ca.name, key, ca=False).add_extension(
                x509.ExtendedKeyUsage(usages), critical=False
            )
            if names:
                builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
            _write_key(key_path, key)
            _write_cert(cert_path, builder.sign(ca.key, hashes.SHA256()))
        return pki

    def client_context(self) -> ssl.SSLContext:
        """A client TLS context trusting the CA and presenting the client certificate."""
        context = ssl.create_default_context(cafile=str(self.ca_cert))
        context.load_cert_chain(self.client_cert, self.client_key)
        return context


class EtcdServer:
    """One etcd member on loopback.

    Args:
        directory: holds the data directory and the log.
        pki: serve https with these certificates and require client certificates
            signed by its CA (``--client-cert-auth``); None serves plain http.
    """

    def __init__(self, directory: Path, pki: EtcdPKI | None = None) -> None:
        self.directory = directory
        self.pki = pki
        self._context = pki.client_context() if pki is not None else None
        self.data_dir = directory / "etcd-data"
        self.log_path = directory / "etcd.log"
        self.client_port = 0
        self.peer_port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The client URL."""
        scheme = "https" if self.pki is not None else "http"
        return f"{scheme}://{HOST}:{self.client_port}"

    @property
    def pid(self) -> int | None:
        """The server's PID while it runs."""
        return self.proc.pid if self.proc is not None and self.running else None

    @property
    def running(self) -> bool:
        """True while the process lives."""
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        """What etcd logged so far."""
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def start(self, timeout: float = 30.0) -> None:
        """Start etcd (the first start picks the ports) and wait until it is healthy."""
        if self.running:
            return
        if not self.client_port:
            self.client_port, self.peer_port = free_port(), free_port()
        peer = f"http://{HOST}:{self.peer_port}"
        tls = (
            [
                f"--cert-file={self.pki.server_cert}",
                f"--key-file={self.pki.server_key}",
                f"--trusted-ca-file={self.pki.ca_cert}",
                "--client-cert-auth",
            ]
            if self.pki is not None
            else []
        )
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    ETCD,
                    "--name=t",
                    f"--data-dir={self.data_dir}",
                    f"--listen-client-urls={self.url}",
                    f"--advertise-client-urls={self.url}",
                    f"--listen-peer-urls={peer}",
                    f"--initial-advertise-peer-urls={peer}",
                    f"--initial-cluster=t={peer}",
                    *tls,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - only calls prctl
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise EtcdError(f"etcd exited with {self.proc.returncode}; log:\n{self.log()}")
            try:
                with urllib.request.urlopen(  # noqa: S310
                    f"{self.url}/health", timeout=1, context=self._context
                ) as resp:
                    if json.loads(resp.read()).get("health") == "true":
                        return
            except (OSError, ValueError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise EtcdError(f"etcd was not healthy within {timeout}s; log:\n{self.log()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM etcd by its PID and wait; SIGKILL after ``timeout``."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL etcd if it runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def enable_auth(self, password: str) -> None:
        """Create user ``root`` with ``password`` and turn etcd's authentication on."""
        for args in (
            ["user", "add", "root", f"--new-user-password={password}"],
            ["auth", "enable"],
        ):
            subprocess.run(
                [ETCDCTL, f"--endpoints={self.url}", *self._etcdctl_tls(), *args],
                env={"ETCDCTL_API": "3"},
                check=True,
                capture_output=True,
                timeout=30,
            )

    def _etcdctl_tls(self) -> list[str]:
        if self.pki is None:
            return []
        return [
            f"--cacert={self.pki.ca_cert}",
            f"--cert={self.pki.client_cert}",
            f"--key={self.pki.client_key}",
        ]

    def keys(self, prefix: str) -> list[str]:
        """The keys under ``prefix`` now."""
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        body = {"key": b64(prefix), "range_end": b64(end)}
        reply = etcd_get(self.url, "/v3/kv/range", body, context=self._context)
        return [base64.b64decode(kv["key"]).decode() for kv in reply.get("kvs", ())]


class SlotWatch:
    """The fleet budget's slot keys as etcd's own watch reports them, independent of
    the code under test (the tests' and the fleet bench's observer).

    Attributes:
        held: slot keys existing now.
        most: the most slot keys held at once after any revision.
        puts: slot keys created or rewritten.
        grants: slot keys created.
        revision: the last revision seen.
        timeline: ``(monotonic seconds, slots held)`` after every revision that changed it.
        ready: set once the watch is established.
    """

    def __init__(self, url: str, prefix: str) -> None:
        self._url = url
        self._prefix = prefix
        self.held: set[str] = set()
        self.most = 0
        self.puts = 0
        self.grants = 0
        self.revision = 0
        self.timeline: list[tuple[float, int]] = []
        self.ready = asyncio.Event()

    async def run(self) -> None:
        """Watch until cancelled."""
        end = self._prefix[:-1] + chr(ord(self._prefix[-1]) + 1)
        request = {"create_request": {"key": b64(self._prefix), "range_end": b64(end)}}
        async with (
            aiohttp.ClientSession(read_bufsize=1 << 22) as session,
            session.post(f"{self._url}/v3/watch", json=request, timeout=None) as resp,
        ):
            async for line in resp.content:
                result = json.loads(line)["result"]
                self._apply(result.get("events", ()))
                self.revision = int(result["header"]["revision"])
                self.ready.set()

    def _apply(self, events: list[dict[str, Any]]) -> None:
        revision = None
        for event in events:
            kv = event["kv"]
            if kv.get("mod_revision") != revision:
                self._record()  # the state after the previous revision
                revision = kv.get("mod_revision")
            key = base64.b64decode(kv["key"]).decode()
            if event.get("type") == "DELETE":
                self.held.discard(key)
                continue
            self.puts += 1
            if key not in self.held:
                self.held.add(key)
                self.grants += 1
        self._record()

    def _record(self) -> None:
        self.most = max(self.most, len(self.held))
        if not self.timeline or self.timeline[-1][1] != len(self.held):
            self.timeline.append((time.monotonic(), len(self.held)))


@pytest.fixture(name="etcd")
def etcd_fixture(tmp_path: Path) -> Iterator[EtcdServer]:
    """A started etcd of the test's own; stopped by PID afterwards."""
    server = EtcdServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


BUDGET = 3
"""Disruptive runs :func:`budget_config` lets hold slots at once unless overridden."""


def budget_config(etcd: EtcdServer, **overrides: Any) -> FleetBudgetConfig:
    """A fleet budget of :data:`BUDGET` on ``etcd`` under the tests' prefix; ``overrides`` win.

    Claims fail at once (``slot_wait`` 0) and waiters look every 20 ms unless overridden.
    """
    values: dict[str, Any] = {
        "enabled": True,
        "endpoints": (etcd.url,),
        "prefix": PREFIX,
        "max_disruptive": BUDGET,
        "lease_ttl": "6s",
        "request_timeout": "2s",
        "slot_wait": "0s",
        "poll_interval": "20ms",
    }
    values.update(overrides)
    return FleetBudgetConfig.model_validate(values)
