"""What a user types to `etlora run` and `etlora_runner`, parsed once in C++ (chat_commands.h):
chat lines, NAME[=STRENGTH] lists and K/M/G sizes, accepted and refused with the same words."""

from __future__ import annotations

import math

import pytest

from etlora import _runtime


@pytest.mark.parametrize("line, expected", [
    ("", ("nothing", "", [])),
    ("  \t ", ("nothing", "", [])),
    ("  hello world \r\n", ("prompt", "hello world", [])),
    ("/quit", ("quit", "", [])),
    ("/adapters", ("adapters", "", [])),
    ("/adapters a=1, b=0.5", ("adapters", "", [("a", 1.0), ("b", 0.5)])),
    ("/adapters\tshout ,, json=-0.25 ", ("adapters", "", [("shout", 1.0), ("json", -0.25)])),
])
def test_chat_lines(line, expected):
    assert _runtime.parse_chat_line(line) == expected


def test_any_number_parses_the_session_refuses_what_is_not_finite():
    """nan and inf parse: the session refuses them naming the adapter (one rule, one place)."""
    kind, _, adapters = _runtime.parse_chat_line("/adapters a=nan, b=inf")
    assert kind == "adapters" and [name for name, _ in adapters] == ["a", "b"]
    assert math.isnan(adapters[0][1]) and math.isinf(adapters[1][1])


@pytest.mark.parametrize("line, message", [
    ("/frobnicate", "unknown command /frobnicate (expected /adapters NAME[=STRENGTH],... or /quit)"),
    ("/adaptersx", "unknown command /adaptersx"),
    ("/adapters a=x", "/adapters: expected NAME or NAME=STRENGTH, received 'a=x'"),
    ("/adapters a=1.5x", "received 'a=1.5x'"),
    ("/adapters =1", "received '=1'"),
    ("/adapters a=", "received 'a='"),
    ("/adapters a, b, a=2", "/adapters: expected each adapter once, received 'a' more than once (hint: a=STRENGTH once)"),
])
def test_refused_chat_lines(line, message):
    with pytest.raises(ValueError) as error:
        _runtime.parse_chat_line(line)
    assert message in str(error.value)


def test_named_strength_and_each_once():
    assert _runtime.parse_named_adapter("chat=0.5", "--adapter") == ("chat", 0.5)
    assert _runtime.parse_named_adapter("chat", "--adapter") == ("chat", 1.0)
    with pytest.raises(ValueError, match=r"^expected NAME or NAME=STRENGTH, received 'chat=loud'$"):  # argparse names it
        _runtime.parse_named_adapter("chat=loud", "")
    _runtime.check_each_adapter_once([("a", 1.0), ("b", 1.0)], "--adapter")
    with pytest.raises(ValueError, match=r"--adapter: expected each adapter once, received 'a' more than once "
                                         r"\(hint: one --adapter a=STRENGTH\)"):
        _runtime.check_each_adapter_once([("a", 1.0), ("a", 0.5)], "--adapter")


@pytest.mark.parametrize("text, value", [("0", 0), ("64M", 64 << 20), ("3k", 3072), ("2G", 2 << 30),
                                         ("18446744073709551615", 2**64 - 1)])
def test_byte_sizes(text, value):
    assert _runtime.parse_byte_size(text) == value


@pytest.mark.parametrize("text", ["", "-1", " -1", "+1", "12X", "1.5M", "M", "1 M", "18446744073709551616",
                                  "17179869184G"])
def test_refused_byte_sizes(text):
    with pytest.raises(ValueError, match=r"expected a size in bytes >= 0 \(suffix K, M or G allowed\), received"):
        _runtime.parse_byte_size(text)


def test_resident_line():
    assert _runtime.resident_line([], 0) == "resident: 0 adapter file(s), 0.00 MB"
    assert _runtime.resident_line(["shout", "json"], 3_900_000) == "resident: 2 adapter file(s), 3.90 MB (shout, json)"
