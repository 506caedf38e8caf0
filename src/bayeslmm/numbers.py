"""How numbers are shown to people: significant digits at every scale.

One rule for every table and sentence (the console, the report, exported tables, priors),
so that a response measured in millionths or in millions keeps its digits. Files meant for
machines (CSV, NetCDF) keep full precision and never go through here.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

#: Significant digits shown unless a caller asks for others.
DIGITS = 4
#: Magnitudes from 1e-4 up to (not including) 1e6 are written out; others in scientific notation.
SMALL, LARGE = 1e-4, 1e6


def format_number(value, digits: int = DIGITS) -> str:
    """A number as text with ``digits`` significant digits.

    Parameters
    ----------
    value : number or None
        Anything else is returned as ``str(value)``.
    digits : int
        Significant digits (at least 1).

    Returns
    -------
    str
        Integers (counts) in full (``480``); missing values (None, NaN) as ``""``; infinities
        as ``inf``/``-inf``; floats with ``digits`` significant digits and trailing zeros
        dropped: plain notation for magnitudes in [1e-4, 1e6), where whole numbers keep all
        their digits (``123456.7 -> '123457'``, ``0.000123456 -> '0.0001235'``), scientific
        notation outside it (``4.2e-05``, ``5.062e+07``).
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, Integral):
        return str(int(value))
    if not isinstance(value, Real):
        return str(value)
    v = float(value)
    if math.isnan(v):
        return ""
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v == 0:
        return "0"
    digits = max(1, int(digits))
    if not SMALL <= abs(v) < LARGE:
        mantissa, exponent = f"{v:.{digits - 1}e}".split("e")
        return f"{_strip(mantissa)}e{exponent}"
    decimals = max(digits - 1 - math.floor(math.log10(abs(v))), 0)
    return _strip(f"{v:.{decimals}f}")


def format_interval(lo, hi, digits: int = DIGITS) -> str:
    """``[lo, hi]`` with :func:`format_number`'s digits, or ``""`` when either end is missing."""
    a, b = format_number(lo, digits), format_number(hi, digits)
    return f"[{a}, {b}]" if a and b else ""


def _strip(text: str) -> str:
    """Drop trailing zeros (and a bare point) after a decimal point."""
    return text.rstrip("0").rstrip(".") if "." in text else text
