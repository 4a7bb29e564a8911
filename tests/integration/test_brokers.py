"""The test broker itself: each listener admits whom it should and refuses the rest, and a
persistent MQTT 5 session keeps its queued QoS 1 messages across a broker restart.

Driven with Mosquitto's own command-line clients, so the fixture is proven independently
of the agent's MQTT code.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import uuid

import aiomqtt
import pytest

from tests.brokers import (  # the fixtures are imported to register them in this module
    BrokerFactory,
    ClientCert,
    Listener,
    MosquittoBroker,
    mosquitto_factory_fixture,  # noqa: F401
    mosquitto_fixture,  # noqa: F401
    mqtt_pki_fixture,  # noqa: F401
)

pytestmark = pytest.mark.mosquitto

# CONNECT, MQTT 5, clean start, keep-alive 10 s, no properties, client id "test".
_MQTT5_CONNECT = bytes.fromhex(
    "1011" + "00044d515454" + "05" + "02" + "000a" + "00" + "0004" + "74657374"
)


def _topic() -> str:
    return f"nodemedic/test/{uuid.uuid4().hex}"


def _pub(
    broker: MosquittoBroker,
    topic: str,
    message: str,
    listener: Listener = "anon",
    *,
    password: str | None = None,
    client: ClientCert = "good",
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "mosquitto_pub",
            *broker.cli_args(listener, password=password, client=client),
            "-q",
            "1",
            "-t",
            topic,
            "-m",
            message,
        ],
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )


def _round_trip(broker: MosquittoBroker, listener: Listener) -> None:
    """Subscribe, publish one message on ``listener``, and see it arrive."""
    topic = _topic()
    sub = subprocess.Popen(
        [
            "stdbuf",  # line-buffered, so SUBACK is seen when it happens
            "-oL",
            "mosquitto_sub",
            *broker.cli_args(listener),
            "-q",
            "1",
            "-t",
            topic,
            "-C",
            "1",
            "-W",
            "10",
            "-d",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert sub.stdout is not None
        # -d prints the broker's SUBACK: only then can a publish not overtake the subscription.
        for line in sub.stdout:
            if "SUBACK" in line:
                break
        else:
            pytest.fail(f"no SUBACK; broker log:\n{broker.log()}")
        result = _pub(broker, topic, "hello")
        assert result.returncode == 0, result.stderr
        out, _ = sub.communicate(timeout=15)
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait(timeout=5)
    assert sub.returncode == 0, out
    assert "hello" in out.splitlines()


def test_anonymous_listener_delivers(mosquitto: MosquittoBroker) -> None:
    assert mosquitto.url("anon") == f"mqtt://127.0.0.1:{mosquitto.port_anon}"
    assert 1883 not in mosquitto.ports
    assert len(set(mosquitto.ports)) == 3
    _round_trip(mosquitto, "anon")


def test_password_listener_refuses_the_bad_password_and_accepts_the_good(
    mosquitto: MosquittoBroker,
) -> None:
    topic = _topic()
    bad = _pub(mosquitto, topic, "x", "password", password=mosquitto.bad_password)
    assert bad.returncode != 0
    assert "not authori" in bad.stderr.lower()

    anonymous = subprocess.run(
        [
            "mosquitto_pub",
            "-V",
            "mqttv5",
            "-h",
            mosquitto.host,
            "-p",
            str(mosquitto.port_password),
            "-t",
            topic,
            "-m",
            "x",
        ],
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )
    assert anonymous.returncode != 0

    good = _pub(mosquitto, topic, "x", "password", password=mosquitto.good_password)
    assert good.returncode == 0, good.stderr
    _round_trip(mosquitto, "password")


def test_tls_listener_accepts_the_good_client_cert_and_refuses_a_foreign_one(
    mosquitto: MosquittoBroker,
) -> None:
    assert mosquitto.url("tls") == f"mqtts://127.0.0.1:{mosquitto.port_tls}"
    topic = _topic()
    foreign = _pub(mosquitto, topic, "x", "tls", client="foreign")
    assert foreign.returncode != 0
    no_cert = _pub(mosquitto, topic, "x", "tls", client="none")
    assert no_cert.returncode != 0
    assert "certificate verify failed" in mosquitto.log()

    good = _pub(mosquitto, topic, "x", "tls", client="good")
    assert good.returncode == 0, good.stderr
    _round_trip(mosquitto, "tls")


def test_tls_contexts_for_python_clients(mosquitto: MosquittoBroker) -> None:
    """The ssl contexts given to Python clients complete (or fail) the handshake alike."""
    with (
        socket.create_connection((mosquitto.host, mosquitto.port_tls), timeout=5) as raw,
        mosquitto.client_context("good").wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(_MQTT5_CONNECT)
        assert tls.recv(1) == b"\x20"  # CONNACK

    assert _tls_connect_fails(mosquitto, "foreign")
    assert _tls_connect_fails(mosquitto, "none")


def _tls_connect_fails(broker: MosquittoBroker, client: ClientCert) -> bool:
    with socket.create_connection((broker.host, broker.port_tls), timeout=5) as raw:
        try:
            with broker.client_context(client).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                # With TLS 1.3 the broker's refusal of the client cert shows on first read.
                tls.sendall(_MQTT5_CONNECT)
                return tls.recv(1) == b""
        except (ssl.SSLError, ConnectionError):
            return True


def test_persistent_session_receives_what_was_queued_across_a_broker_restart(
    mosquitto: MosquittoBroker,
) -> None:
    topic = _topic()
    client_id = f"persistent-{uuid.uuid4().hex[:8]}"
    session = [*mosquitto.cli_args("anon"), "-i", client_id, "-c", "-x", "3600", "-q", "1"]

    # Create the session and its subscription, then go away (-E exits after SUBACK).
    subscribe = subprocess.run(
        ["mosquitto_sub", *session, "-t", topic, "-E"],
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )
    assert subscribe.returncode == 0, subscribe.stderr

    before = [f"before-{i}" for i in range(20)]
    for message in before:
        assert _pub(mosquitto, topic, message).returncode == 0

    ports = mosquitto.ports
    mosquitto.stop()
    assert not mosquitto.running
    mosquitto.start()
    assert mosquitto.ports == ports
    assert "Saving in-memory database" in mosquitto.log()

    after = [f"after-{i}" for i in range(5)]
    for message in after:
        assert _pub(mosquitto, topic, message).returncode == 0

    expected = before + after
    resume = subprocess.run(
        ["mosquitto_sub", *session, "-t", topic, "-C", str(len(expected)), "-W", "10"],
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )
    assert resume.returncode == 0, f"{resume.stderr}\nbroker log:\n{mosquitto.log()}"
    assert resume.stdout.splitlines() == expected


def test_a_broker_without_persistence_forgets_the_session(
    mosquitto_factory: BrokerFactory,
) -> None:
    broker = mosquitto_factory("volatile", persistence=False)
    topic = _topic()
    client_id = f"volatile-{uuid.uuid4().hex[:8]}"
    session = [*broker.cli_args("anon"), "-i", client_id, "-c", "-x", "3600", "-q", "1"]
    subprocess.run(
        ["mosquitto_sub", *session, "-t", topic, "-E"], timeout=15, check=True, capture_output=True
    )
    assert _pub(broker, topic, "lost").returncode == 0
    broker.restart()
    resume = subprocess.run(
        ["mosquitto_sub", *session, "-t", topic, "-C", "1", "-W", "1"],
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )
    assert resume.stdout == ""


# -- the same listeners through aiomqtt, as the agent's Python clients see them ----------


def _client(
    broker: MosquittoBroker,
    listener: Listener,
    *,
    password: str | None = None,
    client: ClientCert = "good",
    timeout: float = 5.0,
) -> aiomqtt.Client:
    return aiomqtt.Client(
        broker.host,
        broker.port(listener),
        username=broker.username if listener == "password" else None,
        password=(password or broker.good_password) if listener == "password" else None,
        protocol=aiomqtt.ProtocolVersion.V5,
        tls_context=broker.client_context(client) if listener == "tls" else None,
        timeout=timeout,
    )


async def _aiomqtt_round_trip(broker: MosquittoBroker, listener: Listener) -> None:
    topic = _topic()
    async with _client(broker, listener) as client:
        await client.subscribe(topic, qos=1)
        await client.publish(topic, b"hello", qos=1)
        async with asyncio.timeout(10):
            message = await anext(aiter(client.messages))
    assert message.payload == b"hello"
    assert message.qos == 1


@pytest.mark.asyncio
@pytest.mark.parametrize("listener", ["anon", "password", "tls"])
async def test_aiomqtt_round_trip_on_every_listener(
    mosquitto: MosquittoBroker, listener: Listener
) -> None:
    await _aiomqtt_round_trip(mosquitto, listener)


@pytest.mark.asyncio
async def test_aiomqtt_is_refused_a_bad_password(mosquitto: MosquittoBroker) -> None:
    with pytest.raises(aiomqtt.MqttCodeError) as refused:
        async with _client(mosquitto, "password", password=mosquitto.bad_password):
            pass
    assert "not authori" in str(refused.value).lower()


@pytest.mark.asyncio
@pytest.mark.parametrize("client", ["foreign", "none"])
async def test_aiomqtt_is_refused_without_a_cert_of_our_ca(
    mosquitto: MosquittoBroker, client: ClientCert
) -> None:
    # aiomqtt sees the broker's TLS alert only as a CONNACK that never comes (paho logs
    # the alert), hence the short timeout.
    with pytest.raises(aiomqtt.MqttError):
        async with _client(mosquitto, "tls", client=client, timeout=1.0):
            pass
    assert "certificate" in mosquitto.log()
