"""Small reusable value checks, and ``argparse`` types built on them.

Every check takes the value and the name to show (``"--threshold"``, ``"model.json: vision.depth"``)
and returns the value, converted where that is lossless, or raises
:class:`~tipsomaly.errors.InvalidOptionError` with a message that says what is accepted::

    finite_float(x, "--sigma")                    # a real number, not nan/inf
    in_range(x, "--threshold", 0, 1)              # low <= x <= high (open ends on request)
    positive_int(n, "--batch-size")               # int >= 1 (bools and 2.0 refused)
    non_negative_int(n, "--workers")              # int >= 0
    multiple_of(n, "--image-size", 14, what="the patch size")
    choice(s, "--cls", ["cls1", "cls2"])
    non_empty(s, "--class-name")

The checks are strict about types (``"12"`` is not an int), which is what a JSON schema wants;
the ``argparse`` adapters (:func:`float_type`, :func:`int_type`, :func:`text_type`) parse the
command-line text first, then run the same checks, so an option is refused while the arguments
are parsed, before any model is loaded. Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import math
import numbers
import os
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from .errors import InvalidOptionError

T = TypeVar("T")

__all__ = [
    "choice",
    "env_seconds",
    "finite_float",
    "float_type",
    "in_range",
    "int_type",
    "multiple_of",
    "non_empty",
    "non_negative_int",
    "positive_int",
    "text_type",
    "tile_side",
]


def _subject(name: str) -> str:
    return f"{name} " if name else ""


def _show(value: Any) -> str:
    """The value as the user wrote it: strings quoted, 5.0 as 5, nan as nan."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _number(x: float) -> str:
    """``1`` for 1.0, ``0.5`` for 0.5: bounds as people write them."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def finite_float(value: Any, name: str = "") -> float:
    """``value`` as a float; refuses non-numbers, booleans, nan and ±inf."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidOptionError(f"{_subject(name)}must be a number, got {_show(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise InvalidOptionError(
            f"{_subject(name)}must be a finite number, got {_show(value)}; give a real value"
        )
    return number


def in_range(
    value: Any,
    name: str = "",
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    hint: str = "",
) -> float:
    """``value`` as a finite float with ``low <= value <= high`` (``<`` for an open end).

    ``None`` leaves that side unbounded; ``hint`` says what the scale means (shown in the error).
    """
    number = finite_float(value, name)
    too_low = low is not None and (number <= low if low_open else number < low)
    too_high = high is not None and (number >= high if high_open else number > high)
    if too_low or too_high:
        if low is not None and high is not None:
            left, right = "(" if low_open else "[", ")" if high_open else "]"
            allowed = f"in {left}{_number(low)}, {_number(high)}{right}"
        elif low is not None:
            allowed = f"{'>' if low_open else '>='} {_number(low)}"
        else:
            allowed = f"{'<' if high_open else '<='} {_number(high)}"
        extra = f" ({hint})" if hint else ""
        raise InvalidOptionError(f"{_subject(name)}must be {allowed}{extra}, got {_show(value)}")
    return number


def _integer(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidOptionError(f"{_subject(name)}must be a whole number, got {_show(value)}")
    return value


def positive_int(value: Any, name: str = "") -> int:
    """``value`` if it is an ``int`` >= 1 (booleans and floats such as 2.0 are refused)."""
    number = _integer(value, name)
    if number < 1:
        raise InvalidOptionError(f"{_subject(name)}must be a positive whole number, got {number}")
    return number


def non_negative_int(value: Any, name: str = "") -> int:
    """``value`` if it is an ``int`` >= 0."""
    number = _integer(value, name)
    if number < 0:
        raise InvalidOptionError(f"{_subject(name)}must be 0 or more, got {number}")
    return number


def multiple_of(value: Any, name: str = "", factor: int = 1, *, what: str = "") -> int:
    """``value`` if it is a positive multiple of ``factor``; the error names the two nearest."""
    number = positive_int(value, name)
    if number % factor:
        below = number // factor * factor
        nearest = [n for n in (below, below + factor) if n > 0]
        of = f"{factor} ({what})" if what else str(factor)
        raise InvalidOptionError(
            f"{_subject(name)}must be a multiple of {of}, got {number}; use "
            + " or ".join(str(n) for n in nearest)
        )
    return number


def choice(value: Any, name: str = "", choices: Iterable[str] = ()) -> str:
    """``value`` if it is one of ``choices`` (exact match)."""
    options = list(choices)
    if value not in options:
        raise InvalidOptionError(
            f"{_subject(name)}must be one of {', '.join(options)}; got {_show(value)}"
        )
    return value


def non_empty(value: Any, name: str = "") -> str:
    """``value`` if it is a string with something besides whitespace."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidOptionError(f"{_subject(name)}must not be empty")
    return value


def env_seconds(name: str, default: float) -> float:
    """The positive number of seconds in the environment variable ``name``; ``default`` when
    it is unset or blank."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    return in_range(_parse_float(text), name, 0, None, low_open=True, hint="seconds")


# -- argparse adapters -------------------------------------------------------------------------
def tile_side(
    value: Any, name: str = "tile", *, at_least: int = 1, what: str = ""
) -> int | str | None:
    """A tile setting: None (untiled), ``"auto"`` or a side in pixels (a whole number >= 1,
    also given as text or as a numpy integer); returns None, ``"auto"`` or the int.

    ``at_least`` (``what`` says what it is, e.g. the model's patch size) is the smallest side
    accepted: a tile smaller than one patch cannot hold a single patch of the image.
    """
    if value is None or value == "auto":
        return value
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InvalidOptionError(
            f"{_subject(name)}must be a side in pixels (an integer >= 1) or 'auto', got "
            f"{_show(value)}"
        )
    if value < at_least:
        of = f"{at_least} ({what})" if what else str(at_least)
        raise InvalidOptionError(
            f"{_subject(name)}must be at least {of} pixels or 'auto', got {int(value)}"
        )
    return int(value)


def _adapter(parse: Callable[[str], Any], check: Callable[[Any], T], type_name: str):
    """An ``argparse`` ``type=``: parse the text, run ``check``, report as ArgumentTypeError.

    argparse prefixes the message with ``argument --option:``, so the checks run unnamed.
    """

    def convert(text: str) -> T:
        try:
            return check(parse(text))
        except InvalidOptionError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = type_name  # argparse shows it in its generic messages
    return convert


def _parse_float(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text  # the check then says "must be a number, got 'abc'"


def _parse_int(text: str) -> Any:
    try:
        return int(text, 10)
    except ValueError:
        return text


def float_type(
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    hint: str = "",
) -> Callable[[str], float]:
    """``type=`` for a finite float, optionally within ``[low, high]`` (see :func:`in_range`)."""
    return _adapter(
        _parse_float,
        lambda v: in_range(v, "", low, high, low_open=low_open, high_open=high_open, hint=hint),
        "number",
    )


def int_type(minimum: int = 1, maximum: int | None = None) -> Callable[[str], int]:
    """``type=`` for a whole number in ``[minimum, maximum]`` (default: positive)."""

    def check(value: Any) -> int:
        number = _integer(value, "")
        if number < minimum or (maximum is not None and number > maximum):
            top = f", {maximum}]" if maximum is not None else " or more"
            allowed = f"in [{minimum}{top}" if maximum is not None else f"{minimum}{top}"
            raise InvalidOptionError(f"must be a whole number {allowed}, got {number}")
        return number

    return _adapter(_parse_int, check, "integer")


def text_type() -> Callable[[str], str]:
    """``type=`` for a string that is not empty or only whitespace."""
    return _adapter(str, non_empty, "text")
