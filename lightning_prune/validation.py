"""Argument checks that name the argument and its allowed range. Pure Python: the controller uses them too.

A number must be a real ``int`` or ``float`` (not a bool, not a string, not None) and finite unless the range allows
infinity; the error says which argument, what it got, and what it takes.
"""

import math
from collections.abc import Sequence
from enum import Enum
from typing import Any


class SettingTypeError(TypeError, ValueError):
    """A setting of the wrong type. Also a ValueError, so ``except ValueError`` catches every bad setting."""


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def check_number(
    name: str,
    value: Any,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Check that ``value`` is a finite real number in the interval; return it.

    Raises:
        SettingTypeError: Not an int or float (a bool, a string and None are not numbers here).
        ValueError: NaN, infinite, or outside the interval.

    Example:
        >>> check_number("growth", 1.5, 1)
        1.5
        >>> check_number("growth", "2", 1)
        Traceback (most recent call last):
        ...
        lightning_prune.validation.SettingTypeError: `growth` must be a number in [1, inf], got '2' (str)
        >>> check_number("shrink", float("nan"), 0, 1, low_open=True)
        Traceback (most recent call last):
        ...
        ValueError: `shrink` must be a number in (0, 1], got nan (float)
    """
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    message = f"`{name}` must be a number in {interval}, got {_describe(value)}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SettingTypeError(message)
    lower_ok = value > low if low_open else value >= low
    upper_ok = value < high if high_open else value <= high
    if not math.isfinite(value) or not (lower_ok and upper_ok):
        raise ValueError(message)
    return value


def check_int(name: str, value: Any, minimum: int) -> int:
    """Check that ``value`` is an int (not a bool) of at least ``minimum``; return it."""
    message = f"`{name}` must be an integer >= {minimum}, got {_describe(value)}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise SettingTypeError(message)
    if value < minimum:
        raise ValueError(message)
    return value


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise SettingTypeError(f"`{name}` must be True or False, got {_describe(value)}")
    return value


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    message = f"`{name}` must be one of {tuple(choices)}, got {_describe(value)}"
    if not isinstance(value, str):
        raise SettingTypeError(message)
    if value not in choices:
        raise ValueError(message)
    return value


class Choice(str, Enum):
    """A setting's word as a type: equal to its string, printed as it, parsed with the setting's name in the error.

    Example:
        >>> class Unit(Choice):
        ...     EPOCH = "epoch"
        ...     STEP = "step"
        >>> Unit.parse("interval_unit", "step"), f"{Unit.EPOCH}", Unit.STEP == "step"
        (<Unit.STEP: 'step'>, 'epoch', True)
        >>> Unit.parse("interval_unit", "hour")
        Traceback (most recent call last):
        ...
        ValueError: `interval_unit` must be one of ('epoch', 'step'), got 'hour' (str)
    """

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, name: str, value: Any) -> "Choice":
        check_choice(name, value.value if isinstance(value, cls) else value, tuple(member.value for member in cls))
        return cls(value)


def check_name(name: str, value: Any, what: str) -> str | None:
    """None, or a non-empty string (``what`` says what it names)."""
    if value is not None and (not isinstance(value, str) or not value):
        raise SettingTypeError(f"`{name}` must be None or the name of {what}, got {_describe(value)}")
    return value


def check_patterns(name: str, value: Any) -> list[str] | None:
    """None, or a list of glob patterns (strings)."""
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Sequence) or not all(isinstance(p, str) for p in value):
        raise SettingTypeError(f"`{name}` must be a list of glob patterns (strings), got {_describe(value)}")
    return list(value)
