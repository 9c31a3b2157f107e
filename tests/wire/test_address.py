"""HOST:PORT, parsed in one place for messages, settings and commands."""

from __future__ import annotations

import pytest

from meshenc.wire.address import MAX_HOST_LENGTH, check_address, parse_address, parse_address_list


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:7400", ("127.0.0.1", 7400)),
        ("[::1]:2379", ("[::1]", 2379)),
        (
            "registry-0.registry.media.svc.cluster.local.:7500",
            ("registry-0.registry.media.svc.cluster.local.", 7500),
        ),
        ("localhost:65535", ("localhost", 65535)),
        ("a" * 63 + ".b:1", ("a" * 63 + ".b", 1)),
    ],
)
def test_addresses_parse_to_host_and_port(value: str, expected: tuple[str, int]) -> None:
    assert parse_address(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "7400",  # no host
        ":7400",
        "host:",  # no port
        "host:0",  # 0 only where a listener asks for it
        "host:65536",
        "host:+80",
        "a b:1",
        "under_score:1",
        "-lead:1",
        "999.1.1.1:1",  # numeric, not an IPv4 address
        "[::g]:1",
        "::1:7400",  # IPv6 without brackets
        "a" * 64 + ":1",  # a label longer than 63
        ("a." * 127) + "ab:1",  # a name longer than MAX_HOST_LENGTH
    ],
)
def test_anything_else_is_refused_with_the_expected_form(value: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_address(value)


def test_a_listener_may_ask_for_port_zero() -> None:
    assert parse_address("0.0.0.0:0", lowest_port=0) == ("0.0.0.0", 0)
    assert check_address("[::]:0", "listen", lowest_port=0) == "[::]:0"


def test_errors_name_what_was_given() -> None:
    with pytest.raises(ValueError, match=r"^seed 'x': must be HOST:PORT"):
        parse_address_list("10.0.0.1:1, x", "seed")


def test_lists_keep_each_address_once_in_order() -> None:
    text = " b:2, a:1 ,,b:2"
    assert parse_address_list(text, "replica") == ("b:2", "a:1")
    assert parse_address_list(["a:1", " ", "a:1"], "replica") == ("a:1",)


def test_the_longest_name_is_accepted() -> None:
    name = ".".join(["a" * 63] * 3 + ["a" * (MAX_HOST_LENGTH - 3 * 64)])
    assert len(name) == MAX_HOST_LENGTH
    assert parse_address(f"{name}:1")[0] == name
