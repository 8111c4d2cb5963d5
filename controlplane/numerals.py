"""Numbers typed as text (the portal's form fields), read as the REST API's validation reads
them: ASCII digits, finite values.

Python's own readers take more than a person means by a number: ``int`` reads Arabic-Indic and
fullwidth digits, ``str.isdigit`` is true for a superscript two that ``int`` refuses (a 500
where it guarded ``int``), and ``float`` reads ``inf``, ``nan`` and ``1e400`` (infinite), which
no runtime, quota or budget can hold. Text that is not a plain number reads as ``None`` here;
callers pass the text on to validation, which refuses it with the 422 the API gives for the
same text.
"""

from __future__ import annotations

import math


def ascii_int(text: str) -> int | None:
    """``text`` as an integer when it is one in ASCII (sign, blanks around and ``_`` between
    digits allowed, as for the API); otherwise ``None``."""
    if not text.isascii():
        return None
    try:
        return int(text)
    except ValueError:  # not a number, or more digits than int() reads
        return None


def finite_float(text: str) -> float | None:
    """``text`` as a finite float when it is an ASCII number; otherwise ``None``."""
    if not text.isascii():
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None
