"""The config's human units: durations, sizes and rates, good and bad."""

from __future__ import annotations

import pytest

from gateway.units import Rate, parse_duration, parse_rate, parse_size


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("250ms", 0.25),
        ("10s", 10.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        (" 2s ", 2.0),
        ("30", 30.0),
        (10, 10.0),
        (0, 0.0),
        (2.5, 2.5),
    ],
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds
    assert isinstance(parse_duration(value), float)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("soon", "expected a duration like 250ms, 10s, 5m, 1h or a number of seconds"),
        ("10x", "expected a duration like 250ms, 10s, 5m, 1h or a number of seconds"),
        ("5 minutes", "expected a duration like 250ms, 10s, 5m, 1h or a number of seconds"),
        ("-5s", "expected a duration like 250ms, 10s, 5m, 1h or a number of seconds"),
        ("", "expected a duration like 250ms, 10s, 5m, 1h or a number of seconds"),
        (True, "expected a duration like 250ms, 10s, 5m, 1h or a number of seconds"),
        (-1, "a duration cannot be negative"),
        (float("inf"), "expected a duration like 250ms, 10s, 5m, 1h or a number of seconds"),
        (float("nan"), "expected a duration like 250ms, 10s, 5m, 1h or a number of seconds"),
    ],
)
def test_bad_durations(value: object, reason: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(value)
    assert str(info.value) == reason


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("512kb", 512 * 1024),
        ("1mb", 1024**2),
        ("1MB", 1024**2),
        ("2gb", 2 * 1024**3),
        ("100b", 100),
        ("1.5kb", 1536),
        ("100", 100),
        (100, 100),
        (0, 0),
    ],
)
def test_sizes(value: object, size: int) -> None:
    assert parse_size(value) == size
    assert isinstance(parse_size(value), int)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("1zb", "expected a size like 512kb, 1mb or a number of bytes"),
        ("lots", "expected a size like 512kb, 1mb or a number of bytes"),
        ("-1kb", "expected a size like 512kb, 1mb or a number of bytes"),
        (False, "expected a size like 512kb, 1mb or a number of bytes"),
        (float("inf"), "expected a size like 512kb, 1mb or a number of bytes"),
        (-5, "a size cannot be negative"),
    ],
)
def test_bad_sizes(value: object, reason: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_size(value)
    assert str(info.value) == reason


@pytest.mark.parametrize(
    ("value", "rate"),
    [
        ("30/minute", Rate(30, 60.0)),
        ("1/second", Rate(1, 1.0)),
        ("1000/hour", Rate(1000, 3600.0)),
        ("5 / second", Rate(5, 1.0)),
    ],
)
def test_rates(value: str, rate: Rate) -> None:
    assert parse_rate(value) == rate
    assert str(parse_rate(value)) == value.replace(" ", "")


@pytest.mark.parametrize("value", ["30/day", "0/minute", "-1/minute", "30 per minute", "30/min", "minute", 30, None])
def test_bad_rates(value: object) -> None:
    with pytest.raises(ValueError) as info:
        parse_rate(value)
    assert str(info.value) == "expected a rate like 30/minute (N/second, N/minute or N/hour, N >= 1)"
