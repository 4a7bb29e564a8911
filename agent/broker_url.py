"""Broker addresses: ``mqtt://host:port`` and ``mqtts://host:port``, parsed and checked."""

from __future__ import annotations

__all__ = ["DEFAULT_PORTS", "BrokerUrl", "parse_broker_url"]

import ipaddress
import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

DEFAULT_PORTS: Final = {"mqtt": 1883, "mqtts": 8883}
"""The IANA ports each scheme uses when the URL names none."""

_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_LABEL}(\.{_LABEL})*\.?")


@dataclass(frozen=True, slots=True)
class BrokerUrl:
    """One broker to connect to.

    Attributes:
        scheme: ``mqtt`` (plain TCP) or ``mqtts`` (TLS).
        host: a DNS name or an IP address (IPv6 without brackets).
        port: the TCP port.
    """

    scheme: str
    host: str
    port: int

    @property
    def tls(self) -> bool:
        """True for ``mqtts://``."""
        return self.scheme == "mqtts"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_broker_url(text: str) -> BrokerUrl:
    """Parse ``mqtt://host[:port]`` or ``mqtts://host[:port]``.

    Raises:
        ValueError: naming what is wrong and showing the accepted form.
    """
    form = "use mqtt://HOST:PORT or mqtts://HOST:PORT, e.g. mqtts://broker.example.com:8883"
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError as err:
        raise ValueError(f"invalid broker url {text!r}: {err}; {form}") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        got = f"scheme {parts.scheme!r}" if parts.scheme else "no scheme"
        raise ValueError(f"invalid broker url {text!r}: {got}; {form}")
    if parts.username is not None or parts.password is not None:
        # Never echo the url: it holds a secret.
        raise ValueError(
            f"invalid broker url '{parts.scheme}://***@{parts.hostname or ''}': credentials do"
            " not belong in the url; "
            "set mqtt.username and mqtt.password (or the mqtt__password credential)"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"invalid broker url {text!r}: no path or query allowed; {form}")
    host = parts.hostname or ""
    if not host:
        raise ValueError(f"invalid broker url {text!r}: no host; {form}")
    if not _valid_host(host):
        raise ValueError(f"invalid broker url {text!r}: {host!r} is not a host name or address")
    if port == 0:
        raise ValueError(f"invalid broker url {text!r}: port 0 is not a broker port")
    return BrokerUrl(scheme, host, port if port is not None else DEFAULT_PORTS[scheme])


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return len(host) <= 253 and _HOSTNAME.fullmatch(host) is not None
    return True
