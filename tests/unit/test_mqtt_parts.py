"""The publisher's pure parts: backoff, topics, broker urls, failure classification, tail lines."""

from __future__ import annotations

import ssl
from datetime import timedelta
from pathlib import Path

import aiomqtt
import pytest
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from agent.backoff import Backoff
from agent.broker_url import BrokerUrl, parse_broker_url
from agent.config import load_settings
from agent.errors import ConfigError
from agent.mqtt import _classify
from agent.topics import Topics, format_event_line

BROKER = BrokerUrl("mqtt", "broker", 1883)


def test_backoff_doubles_to_the_cap_with_equal_jitter() -> None:
    low = Backoff(initial=0.5, maximum=60, rng=lambda: 0.0)
    high = Backoff(initial=0.5, maximum=60, rng=lambda: 0.999999)
    lows = [low.next() for _ in range(12)]
    highs = [high.next() for _ in range(12)]
    assert lows[:5] == [0.25, 0.5, 1.0, 2.0, 4.0]
    assert highs[:3] == pytest.approx([0.5, 1.0, 2.0])
    assert lows[-1] == 30.0  # half the cap: never an almost immediate retry
    assert highs[-1] == pytest.approx(60.0)
    low.reset()
    assert low.next() == 0.25


def test_backoff_never_overflows_after_many_attempts() -> None:
    backoff = Backoff(initial=0.1, maximum=5, rng=lambda: 0.5)
    for _ in range(10_000):
        delay = backoff.next()
    assert delay == pytest.approx(3.75)
    with pytest.raises(ValueError, match="initial"):
        Backoff(initial=2, maximum=1)


def test_topics_follow_the_design_table() -> None:
    topics = Topics("nodemedic/v1", "web-17")
    assert topics.status == "nodemedic/v1/nodes/web-17/status"
    assert topics.conditions == "nodemedic/v1/nodes/web-17/conditions"
    assert (
        topics.event("io.nodemedic.condition.firing")
        == "nodemedic/v1/nodes/web-17/events/io.nodemedic.condition.firing"
    )
    assert topics.event("a/b+c#") == "nodemedic/v1/nodes/web-17/events/a_b_c_"
    assert Topics.event_filter("p", None, None) == "p/nodes/+/events/#"
    assert Topics.event_filter("p", "n", "t") == "p/nodes/n/events/t"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://broker", "mqtt://broker:1883"),
        ("mqtts://broker.example.com", "mqtts://broker.example.com:8883"),
        ("MQTT://10.0.0.1:1884", "mqtt://10.0.0.1:1884"),
        ("mqtt://[::1]:1883", "mqtt://[::1]:1883"),
    ],
)
def test_broker_urls_parse(url: str, expected: str) -> None:
    assert str(parse_broker_url(url)) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://broker:1883", "scheme 'http'"),
        ("broker:1883", "scheme 'broker'"),
        ("mqtt://:1883", "no host"),
        ("mqtt://broker:99999", "out of range"),
        ("mqtt://broker/topic", "no path"),
        ("mqtt://bad_host", "not a host name"),
        ("mqtt://broker:0", "port 0"),
    ],
)
def test_bad_broker_urls_say_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_broker_url(url)


def test_credentials_in_a_url_are_refused_without_echoing_them() -> None:
    with pytest.raises(ValueError, match="credentials do not belong") as caught:
        parse_broker_url("mqtt://user:s3cret@broker:1883")
    assert "s3cret" not in str(caught.value)


def test_connack_refusals_are_classified() -> None:
    bad_login = ReasonCode(PacketTypes.CONNACK, identifier=0x86)
    not_authorised_v5 = ReasonCode(PacketTypes.CONNACK, identifier=0x87)
    busy = ReasonCode(PacketTypes.CONNACK, identifier=0x89)
    banned = ReasonCode(PacketTypes.CONNACK, identifier=0x8A)
    for rc in (bad_login, not_authorised_v5, 4, 5):
        failure = _classify(MqttConnectError(rc), None, BROKER)
        assert failure.kind == "auth"
        assert failure.misconfigured
        assert "refused the credentials" in failure.reason
    assert _classify(MqttConnectError(busy), None, BROKER).kind == "network"
    assert _classify(MqttConnectError(3), None, BROKER).kind == "network"
    assert _classify(MqttConnectError(banned), None, BROKER).kind == "refused"


def test_tls_and_network_failures_are_classified() -> None:
    def raised_from(cause: BaseException) -> aiomqtt.MqttError:
        try:
            try:
                raise cause
            except OSError:
                raise aiomqtt.MqttError(str(cause)) from None  # as aiomqtt does
        except aiomqtt.MqttError as err:
            return err

    untrusted = ssl.SSLCertVerificationError(1, "certificate verify failed")
    untrusted.verify_message = "self-signed certificate"
    failure = _classify(raised_from(untrusted), None, BROKER)
    assert (failure.kind, failure.misconfigured) == ("tls", True)
    assert "not trusted (self-signed certificate)" in failure.reason
    alert = "failed to receive on socket: [SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca"
    timeout = aiomqtt.MqttError("Operation timed out")
    failure = _classify(timeout, alert, BROKER)
    assert failure.kind == "tls"
    assert "rejected the TLS handshake ([SSL: TLSV1_ALERT_UNKNOWN_CA]" in failure.reason
    refused = _classify(raised_from(ConnectionRefusedError(111, "refused")), None, BROKER)
    assert (refused.kind, refused.misconfigured) == ("network", False)
    assert refused.reason.startswith("cannot reach mqtt://broker:1883")


def test_a_tail_line_shows_time_node_sequence_type_subject_and_short_data() -> None:
    event = {
        "time": "2026-11-29T17:40:02.113Z",
        "source": "nodemedic://web-17",
        "sequence": 42,
        "type": "io.nodemedic.condition.firing",
        "subject": "disk-full",
        "data": {"rule": "disk-full", "text": "x" * 200},
    }
    line = format_event_line(event, width=40)
    assert line.startswith("2026-11-29T17:40:02.113Z web-17 #42 io.nodemedic.condition.firing ")
    assert line.endswith('disk-full {"rule":"disk-full","text":"xxxxxxxxx...')


# --- the mqtt config section ----------------------------------------------------------


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "nodemedic.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_without_a_url_the_agent_is_local_only(tmp_path: Path) -> None:
    settings = load_settings(_write(tmp_path, "state_dir: /tmp/x\n"), environ={})
    assert not settings.mqtt.enabled
    assert settings.mqtt.topic_prefix == "nodemedic/v1"
    assert settings.mqtt.protocol == "5"


def test_one_url_or_a_failover_list_and_the_protocol_as_yaml_writes_it(tmp_path: Path) -> None:
    one = load_settings(_write(tmp_path, "mqtt: {url: 'mqtt://a', protocol: 5}\n"), environ={})
    assert [str(b) for b in one.mqtt.brokers] == ["mqtt://a:1883"]
    assert one.mqtt.protocol == "5"
    many = load_settings(
        _write(
            tmp_path,
            "mqtt:\n  url: [mqtts://a, 'mqtts://b:8884']\n  protocol: 3.1.1\n"
            "  outbox: {max_bytes: 2MiB}\n  session_expiry: 2h\n",
        ),
        environ={},
    )
    assert [str(b) for b in many.mqtt.brokers] == ["mqtts://a:8883", "mqtts://b:8884"]
    assert many.mqtt.protocol == "3.1.1"
    assert many.mqtt.outbox.max_bytes == 2 * 1024 * 1024
    assert many.mqtt.session_expiry == timedelta(hours=2)


def test_the_password_comes_from_a_systemd_credential_and_is_never_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "mqtt__password").write_text("s3cret-from-systemd\n", encoding="utf-8")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    path = _write(tmp_path, "mqtt: {url: 'mqtt://a', username: web-17}\n")
    settings = load_settings(path, environ={"CREDENTIALS_DIRECTORY": str(credentials)})
    assert settings.mqtt.password is not None
    assert settings.mqtt.password.get_secret_value() == "s3cret-from-systemd"
    assert "s3cret" not in repr(settings)


def test_a_url_from_the_environment_is_one_broker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NODEMEDIC_MQTT__URL", "mqtts://env-broker:8883")
    settings = load_settings(_write(tmp_path, "state_dir: /tmp/x\n"), environ={})
    assert [str(b) for b in settings.mqtt.brokers] == ["mqtts://env-broker:8883"]


def test_a_bad_url_with_credentials_is_not_echoed_in_the_error(tmp_path: Path) -> None:
    path = _write(tmp_path, "mqtt: {url: 'mqtt://u:hunter2@broker'}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    assert "mqtt.url" in str(caught.value)
    assert "hunter2" not in str(caught.value)
