"""Yuan as people write them ↔ fen as onecard counts them: exactly, never through a float.

:func:`parse_yuan` reads what an operator types or a spreadsheet, bank statement or
command line holds — ``12.5``, ``¥12.50``, ``￥1,234.00``, ``12.50元``, ``CNY 12.50``,
full-width digits — and :func:`format_yuan` writes what it reads (``1250`` → ``"12.50"``).
What a blank means and how much is too much differ per caller (an import's opening
balance, a statement line, a command's argument), so they are parameters.
"""

from __future__ import annotations

import re
import unicodedata
from decimal import Context, Decimal
from typing import Literal

AmountCode = Literal["amount_invalid", "amount_negative", "amount_fraction", "amount_too_large"]

#: What may stand before the number (after a minus sign) or after it.
CURRENCY_PREFIXES = ("¥", "CNY", "RMB")
CURRENCY_SUFFIX = "元"

# re.ASCII: \d is 0-9 only (NFKC has already folded full-width digits).
_NUMBER = re.compile(r"\d{1,15}(?:\.\d{0,15})?|\.\d{1,15}", re.ASCII)
_GROUPED = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d*)?", re.ASCII)
# Room for every digit _NUMBER admits, times 100: the default 28 digits would round
# (and so could hide a fraction of a fen).
_EXACT = Context(prec=40)


class AmountError(ValueError):
    """A text that is not an acceptable amount of yuan; ``code`` says why."""

    def __init__(self, code: AmountCode, message: str) -> None:
        super().__init__(message)
        self.code: AmountCode = code


def parse_yuan(text: str, *, cap: int | None = None, blank: int | None = None) -> int:
    """Fen in a yuan amount: ``"12.5"``, ``"¥12.50"``, ``"1,234.00"``, ``"12.50元"`` → fen.

    ``blank`` is what a blank text (or a currency sign alone) stands for; None makes it an
    error. ``cap`` is the largest amount accepted, in fen (None: any). Thousands separators
    must group by three. Raises :class:`AmountError`: ``amount_invalid`` (not a number,
    or blank without ``blank``), ``amount_negative`` (a minus sign; ``-0`` is 0),
    ``amount_fraction`` (a fraction of a fen), ``amount_too_large`` (above ``cap``).
    """
    # NFKC: full-width digits and ￥ too (ASCII is its own normal form).
    s = (text if text.isascii() else unicodedata.normalize("NFKC", text)).strip()
    negative = s.startswith("-")
    s = s.removeprefix("-").strip()
    s = next((s.removeprefix(c) for c in CURRENCY_PREFIXES if s.startswith(c)), s)
    s = s.removesuffix(CURRENCY_SUFFIX).strip()
    if _GROUPED.fullmatch(s):
        s = s.replace(",", "")
    if not s and not negative and blank is not None:
        return blank
    if not _NUMBER.fullmatch(s):
        what = f"{_clip(text)!r} is not an amount of yuan" if text.strip() else "no amount given"
        raise AmountError("amount_invalid", what)
    fen = _EXACT.multiply(Decimal(s), 100)
    if negative and fen:
        raise AmountError("amount_negative", f"{_clip(text)!r} is negative")
    if fen != fen.to_integral_value():
        raise AmountError(
            "amount_fraction", f"{_clip(text)!r} has a fraction of a fen (at most 2 decimals)"
        )
    if cap is not None and fen > cap:
        raise AmountError(
            "amount_too_large", f"{_clip(text)!r} is above the cap of {format_yuan(cap)}"
        )
    return int(fen)


def format_yuan(fen: int) -> str:
    """Fen as yuan with two decimals, from integers only (``1250`` → ``"12.50"``, ``-5`` →
    ``"-0.05"``; no currency sign): what :func:`parse_yuan` reads."""
    sign = "-" if fen < 0 else ""
    whole, part = divmod(abs(fen), 100)
    return f"{sign}{whole}.{part:02d}"


def _clip(text: str) -> str:
    return text if len(text) <= 40 else text[:39] + "…"
