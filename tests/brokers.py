"""Real Mosquitto brokers for the tests, started as child processes on ephemeral ports.

Each :class:`MosquittoBroker` writes its own config, password file and data directory
under a tmp dir and runs ``mosquitto -c <conf>`` with three loopback listeners:

* ``anon``: plain MQTT, anonymous clients allowed;
* ``password``: plain MQTT, user ``nodemedic`` with :attr:`MosquittoBroker.good_password`;
* ``tls``: MQTT over TLS with ``require_certificate true``; clients present a certificate
  signed by :attr:`TestPKI.ca_cert`, and :attr:`TestPKI.foreign_client_cert` (signed by
  another CA) is refused.

Port 1883 and the system broker are never used.

Fixtures: ``mosquitto`` (a started broker, persistence on), ``mosquitto_factory`` (make
more, with options) and ``mqtt_pki`` (session-wide certificates). Register them either
with ``pytest_plugins = ["tests.brokers"]`` in ``tests/conftest.py``, or per module by
importing the fixture functions, whose Python names differ from the fixture names so a
test's ``mosquitto`` argument does not shadow an import::

    from tests.brokers import mosquitto_factory_fixture, mosquitto_fixture, mqtt_pki_fixture
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import ipaddress
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Listener = Literal["anon", "password", "tls"]
ClientCert = Literal["good", "foreign", "none"]

HOST = "127.0.0.1"
USERNAME = "nodemedic"
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:
    # A test run killed with SIGKILL (timeout -s KILL) must not leave brokers behind.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


# --- certificates -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Issuer:
    name: x509.Name
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not ca,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _builder(
    common_name: str, issuer: x509.Name | None, key: ec.EllipticCurvePrivateKey, *, ca: bool
) -> x509.CertificateBuilder:
    """A certificate valid for two days, with the extensions every one of ours carries."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer or subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), True)
        .add_extension(_key_usage(ca=ca), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )


def _make_ca(common_name: str) -> _Issuer:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _builder(common_name, None, key, ca=True).sign(key, hashes.SHA256())
    return _Issuer(cert.subject, key, cert)


def _issue(
    issuer: _Issuer, common_name: str, *, server: bool
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        _builder(common_name, issuer.name, key, ca=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), False
        )
    )
    if server:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return key, builder.sign(issuer.key, hashes.SHA256())


@dataclass(frozen=True, slots=True)
class TestPKI:
    """Throwaway certificates for the TLS listener, as PEM files in one directory.

    ``client_cert``/``client_key`` are signed by ``ca_cert`` (accepted);
    ``foreign_client_cert``/``foreign_client_key`` by ``foreign_ca_cert`` (refused).
    The server certificate is valid for ``127.0.0.1`` and ``localhost``.
    """

    __test__ = False  # not a test class, whatever its name says

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    foreign_ca_cert: Path
    foreign_client_cert: Path
    foreign_client_key: Path

    @classmethod
    def create(cls, directory: Path) -> TestPKI:
        """Mint a CA, a server and a client certificate, and a client of a foreign CA."""
        directory.mkdir(parents=True, exist_ok=True)
        pki = cls(
            ca_cert=directory / "ca.crt",
            server_cert=directory / "server.crt",
            server_key=directory / "server.key",
            client_cert=directory / "client.crt",
            client_key=directory / "client.key",
            foreign_ca_cert=directory / "foreign-ca.crt",
            foreign_client_cert=directory / "foreign-client.crt",
            foreign_client_key=directory / "foreign-client.key",
        )
        ca = _make_ca("nodemedic test CA")
        foreign = _make_ca("someone else's CA")
        _write_cert(pki.ca_cert, ca.cert)
        _write_cert(pki.foreign_ca_cert, foreign.cert)
        for key_path, cert_path, issuer, cn, server in (
            (pki.server_key, pki.server_cert, ca, "localhost", True),
            (pki.client_key, pki.client_cert, ca, "nodemedic-test-client", False),
            (pki.foreign_client_key, pki.foreign_client_cert, foreign, "intruder", False),
        ):
            key, cert = _issue(issuer, cn, server=server)
            _write_key(key_path, key)
            _write_cert(cert_path, cert)
        return pki

    def client_context(self, client: ClientCert = "good") -> ssl.SSLContext:
        """A client-side TLS context trusting the test CA and presenting ``client``'s cert."""
        context = ssl.create_default_context(cafile=str(self.ca_cert))
        if client == "good":
            context.load_cert_chain(self.client_cert, self.client_key)
        elif client == "foreign":
            context.load_cert_chain(self.foreign_client_cert, self.foreign_client_key)
        return context


# --- the broker ---------------------------------------------------------------------


class MosquittoError(RuntimeError):
    """Raised when a test broker cannot be started or stopped; carries its log."""


class MosquittoBroker:
    """A real ``mosquitto`` child process with anonymous, password and TLS listeners.

    Ports are chosen once (ephemeral, loopback) and kept across :meth:`stop` /
    :meth:`start`, as is the data directory, so a persistent session and its queued
    QoS 1 messages survive a restart when ``persistence`` is on (Mosquitto writes its
    database on SIGTERM; :meth:`kill` loses what was not yet saved, unless
    ``autosave_interval`` is set).
    """

    host = HOST
    username = USERNAME
    good_password = "good-pass-7c1f"  # noqa: S105 - the test broker's own throwaway secret
    bad_password = "wrong-pass-0000"  # noqa: S105

    def __init__(
        self,
        workdir: Path,
        pki: TestPKI,
        *,
        persistence: bool = True,
        max_queued_messages: int = 0,
        max_inflight_messages: int = 20,
        autosave_interval: int | None = None,
        log_types: tuple[str, ...] = ("error", "warning", "notice", "information"),
        acl_file: Path | None = None,
        users: Mapping[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.acl_file = acl_file
        self.users = dict(users or {})
        self.pki = pki
        self.persistence = persistence
        self.data_dir = workdir / "data"
        self.conf_path = workdir / "mosquitto.conf"
        self.password_file = workdir / "passwd"
        self.log_path = workdir / "mosquitto.log"
        self._max_queued = max_queued_messages
        self._max_inflight = max_inflight_messages
        self._autosave = autosave_interval
        self._log_types = log_types
        self.port_anon = 0
        self.port_password = 0
        self.port_tls = 0
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(exist_ok=True)
        self._write_password_file()

    # The TLS listener's client files, for convenience.
    @property
    def ca_cert(self) -> Path:
        """The CA that signed the server and the good client certificate."""
        return self.pki.ca_cert

    @property
    def client_cert(self) -> Path:
        """A client certificate the TLS listener accepts."""
        return self.pki.client_cert

    @property
    def client_key(self) -> Path:
        """The key of :attr:`client_cert`."""
        return self.pki.client_key

    @property
    def foreign_client_cert(self) -> Path:
        """A client certificate of another CA, which the TLS listener refuses."""
        return self.pki.foreign_client_cert

    @property
    def foreign_client_key(self) -> Path:
        """The key of :attr:`foreign_client_cert`."""
        return self.pki.foreign_client_key

    @property
    def pid(self) -> int | None:
        """The broker's PID while it runs."""
        return self.proc.pid if self.running and self.proc is not None else None

    @property
    def running(self) -> bool:
        """Whether the broker process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def port(self, listener: Listener) -> int:
        """The port of ``listener``."""
        return {"anon": self.port_anon, "password": self.port_password, "tls": self.port_tls}[
            listener
        ]

    def url(self, listener: Listener = "anon") -> str:
        """``mqtt://127.0.0.1:<port>``, or ``mqtts://`` for the TLS listener."""
        scheme = "mqtts" if listener == "tls" else "mqtt"
        return f"{scheme}://{self.host}:{self.port(listener)}"

    def client_context(self, client: ClientCert = "good") -> ssl.SSLContext:
        """A TLS context for the TLS listener (see :meth:`TestPKI.client_context`)."""
        return self.pki.client_context(client)

    def cli_args(
        self,
        listener: Listener = "anon",
        *,
        password: str | None = None,
        client: ClientCert = "good",
    ) -> list[str]:
        """Connection options for ``mosquitto_pub``/``mosquitto_sub`` (MQTT 5).

        On the password listener ``password`` defaults to :attr:`good_password`.
        """
        args = ["-V", "mqttv5", "-h", self.host, "-p", str(self.port(listener))]
        if listener == "password":
            args += ["-u", self.username, "-P", password or self.good_password]
        if listener == "tls":
            args += ["--cafile", str(self.ca_cert)]
            if client == "good":
                args += ["--cert", str(self.client_cert), "--key", str(self.client_key)]
            elif client == "foreign":
                args += [
                    "--cert",
                    str(self.foreign_client_cert),
                    "--key",
                    str(self.foreign_client_key),
                ]
        return args

    def log(self) -> str:
        """Everything the broker logged so far (all its runs)."""
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def start(self, timeout: float = 10.0) -> None:
        """Start the broker and wait until every listener accepts a connection.

        The first start picks the ports (and picks again if one was taken meanwhile);
        later starts reuse them.
        """
        if self.running:
            return
        first = self.port_anon == 0
        for attempt in range(3):
            if first:
                self.port_anon, self.port_password, self.port_tls = _three_free_ports()
            self._write_config()
            try:
                self._spawn_and_wait(timeout)
            except MosquittoError:
                if first and attempt < 2 and "Address already in use" in self.log():
                    continue
                raise
            return

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the broker (it saves its database) and wait; SIGKILL after ``timeout``."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise MosquittoError(
                f"mosquitto ignored SIGTERM for {timeout}s and was killed; log:\n{self.log()}"
            ) from None

    def kill(self) -> None:
        """SIGKILL the broker if it runs (nothing is saved)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def restart(self, timeout: float = 10.0) -> None:
        """:meth:`stop` then :meth:`start`."""
        self.stop(timeout)
        self.start(timeout)

    # --- internals

    def _write_password_file(self) -> None:
        self.password_file.write_text("", encoding="utf-8")
        self.password_file.chmod(0o600)
        for user, password in {self.username: self.good_password, **self.users}.items():
            subprocess.run(
                [MOSQUITTO_PASSWD, "-b", str(self.password_file), user, password],
                check=True,
                capture_output=True,
                timeout=10,
            )

    def _write_config(self) -> None:
        lines = [
            "# written by tests/brokers.py",
            "per_listener_settings true",
            "log_dest stderr",
            *(f"log_type {kind}" for kind in self._log_types),
            "connection_messages true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.data_dir}/",
            f"max_queued_messages {self._max_queued}",
            f"max_inflight_messages {self._max_inflight}",
        ]
        if self._autosave is not None:
            lines.append(f"autosave_interval {self._autosave}")
        if os.geteuid() == 0:
            # Mosquitto drops root to user "mosquitto", which cannot read the test's
            # private tmp dir; the broker only ever listens on loopback.
            lines.append("user root")
        lines += [
            # As the README recommends: replies and acknowledgements leave at once.
            "set_tcp_nodelay true",
            f"listener {self.port_anon} {self.host}",
            "allow_anonymous true",
            f"listener {self.port_password} {self.host}",
            "allow_anonymous false",
            f"password_file {self.password_file}",
            *([f"acl_file {self.acl_file}"] if self.acl_file is not None else []),
            f"listener {self.port_tls} {self.host}",
            "allow_anonymous true",
            f"cafile {self.pki.ca_cert}",
            f"certfile {self.pki.server_cert}",
            f"keyfile {self.pki.server_key}",
            "require_certificate true",
        ]
        self.conf_path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def _spawn_and_wait(self, timeout: float) -> None:
        with self.log_path.open("ab") as log:
            log.write(f"--- start on ports {self.ports}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [MOSQUITTO, "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - only calls prctl
            )
        deadline = time.monotonic() + timeout
        pending = list(self.ports)
        while pending:
            if self.proc.poll() is not None:
                raise MosquittoError(
                    f"mosquitto exited with {self.proc.returncode} at start; log:\n{self.log()}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise MosquittoError(
                    f"mosquitto did not accept connections on {pending} within {timeout}s; "
                    f"log:\n{self.log()}"
                )
            try:
                with socket.create_connection((self.host, pending[0]), timeout=0.5):
                    pending.pop(0)
            except OSError:
                time.sleep(0.02)

    @property
    def ports(self) -> tuple[int, int, int]:
        """(anon, password, tls) ports."""
        return self.port_anon, self.port_password, self.port_tls


def _three_free_ports() -> tuple[int, int, int]:
    # Held open together so the three are distinct.
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(3)]
    try:
        for sock in socks:
            sock.bind((HOST, 0))
        a, b, c = (int(sock.getsockname()[1]) for sock in socks)
        return a, b, c
    finally:
        for sock in socks:
            sock.close()


# --- pytest fixtures ----------------------------------------------------------------

BrokerFactory = Callable[..., MosquittoBroker]


@pytest.fixture(name="mqtt_pki", scope="session")
def mqtt_pki_fixture(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    """Certificates for the TLS listener, minted once per test session."""
    if shutil.which("mosquitto") is None and not Path(MOSQUITTO).exists():
        pytest.fail("mosquitto is not installed: run `make pytest` (apt: mosquitto)")
    return TestPKI.create(tmp_path_factory.mktemp("mqtt-pki"))


@pytest.fixture(name="mosquitto_factory")
def mosquitto_factory_fixture(tmp_path: Path, mqtt_pki: TestPKI) -> Iterator[BrokerFactory]:
    """Make started :class:`MosquittoBroker` instances (keyword options as its
    constructor's); every one is killed at the end of the test."""
    made: list[MosquittoBroker] = []

    def make(
        name: str = "mosquitto",
        *,
        persistence: bool = True,
        max_queued_messages: int = 0,
        max_inflight_messages: int = 20,
        autosave_interval: int | None = None,
        acl_file: Path | None = None,
        users: Mapping[str, str] | None = None,
    ) -> MosquittoBroker:
        broker = MosquittoBroker(
            tmp_path / name,
            mqtt_pki,
            persistence=persistence,
            max_queued_messages=max_queued_messages,
            max_inflight_messages=max_inflight_messages,
            autosave_interval=autosave_interval,
            acl_file=acl_file,
            users=users,
        )
        made.append(broker)
        broker.start()
        return broker

    yield make
    for broker in made:
        with contextlib.suppress(Exception):
            broker.kill()


@pytest.fixture(name="mosquitto")
def mosquitto_fixture(mosquitto_factory: BrokerFactory) -> MosquittoBroker:
    """A started broker with persistence on (unlimited queue), killed after the test."""
    return mosquitto_factory()
