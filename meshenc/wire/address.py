"""HOST:PORT: the one way meshenc names a network address, in messages, settings and commands.

A host is a DNS name (labels of ``[A-Za-z0-9-]``, at most ``MAX_HOST_LENGTH`` characters, a
trailing dot allowed), a dotted IPv4 address or a bracketed IPv6 address (``[::1]``); the port
is decimal, 1..65535 (0 where a listener may ask the system for one). Registry records,
adjacency documents, ``--peers``, ``--registry``, ``--listen`` and the commands' arguments all
go through :func:`parse_address`, so an address one part accepts is never refused by another.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Final

__all__ = ["MAX_HOST_LENGTH", "check_address", "parse_address", "parse_address_list"]

MAX_HOST_LENGTH: Final = 253
"""The longest DNS name (RFC 1035), without the trailing dot."""

_DNS_LABEL_RE: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_NUMERIC_HOST_RE: Final = re.compile(r"[0-9.]+")
_PORT_RE: Final = re.compile(r"[0-9]{1,5}")


def _show(value: str) -> str:
    text = repr(value)
    return text if len(text) <= 48 else f"{text[:45]}..."


def _check_host(host: str) -> None:
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"bracketed host must be an IPv6 address, got {_show(host)}") from None
        return
    if _NUMERIC_HOST_RE.fullmatch(host) is not None:
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"numeric host must be an IPv4 address, got {_show(host)}") from None
        return
    name = host.removesuffix(".")
    if (
        not name
        or len(name) > MAX_HOST_LENGTH
        or not all(_DNS_LABEL_RE.fullmatch(label) for label in name.split("."))
    ):
        raise ValueError(
            f"host must be a DNS name (at most {MAX_HOST_LENGTH} characters, labels of "
            f"[A-Za-z0-9-]), an IPv4 address or a bracketed IPv6 address, got {_show(host)}"
        )


def parse_address(value: str, *, lowest_port: int = 1) -> tuple[str, int]:
    """``"registry-0.registry:7500"`` → ``("registry-0.registry", 7500)``.

    Raises:
        ValueError: saying what is wrong: no ``host:port`` shape, a port outside
            ``lowest_port..65535``, or a host that is no DNS name or IP address.
    """
    host, colon, port = value.rpartition(":")
    if not colon or not host:
        raise ValueError(f"must be HOST:PORT, got {_show(value)}")
    if _PORT_RE.fullmatch(port) is None or not lowest_port <= int(port) <= 65535:
        raise ValueError(
            f"must be HOST:PORT with a port in {lowest_port}..65535, got {_show(value)}"
        )
    try:
        _check_host(host)
    except ValueError as exc:
        raise ValueError(f"must be HOST:PORT: {exc}") from None
    return host, int(port)


def check_address(value: str, what: str, *, lowest_port: int = 1) -> str:
    """``value`` when it is a valid address; otherwise ValueError naming ``what``."""
    try:
        parse_address(value, lowest_port=lowest_port)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None
    return value


def parse_address_list(text: str | Iterable[str], what: str) -> tuple[str, ...]:
    """``"10.0.0.2:7500, registry-1:7500"`` (or the items) → the addresses, each once, in
    order; ValueError naming ``what`` and the first bad item."""
    items = text.split(",") if isinstance(text, str) else text
    addresses = [item.strip() for item in items if item.strip()]
    return tuple(dict.fromkeys(check_address(a, f"{what} {a!r}") for a in addresses))
