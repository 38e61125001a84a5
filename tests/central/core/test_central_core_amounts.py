"""Yuan text ↔ fen: central.core.amounts, the one parser and formatter central uses."""

from __future__ import annotations

import string
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from central.core.amounts import AmountError, format_yuan, parse_yuan

#: The member import's cap on an opening balance (¥100,000.00), as an example of a cap.
CAP = 10_000_000
CODES = {"amount_invalid", "amount_negative", "amount_fraction", "amount_too_large"}


@pytest.mark.parametrize(
    ("text", "fen"),
    [
        ("12.50", 1250),
        ("12.5", 1250),
        ("¥12.5", 1250),
        ("￥12.50", 1250),
        ("12.50元", 1250),
        (" ¥ 12.50 元 ", 1250),
        ("CNY12.50", 1250),
        ("RMB 1,200.00", 120000),
        ("1,234.00", 123400),
        ("1,234,567", 123456700),
        ("１２.５", 1250),  # full-width digits
        ("０.０５", 5),
        ("0", 0),
        ("-0.00", 0),
        (".5", 50),
        ("7.", 700),
        ("12.500", 1250),  # exact in fen: a trailing zero is not a fraction
        ("100000.00", CAP),
    ],
)
def test_yuan_amounts_become_exact_fen(text: str, fen: int) -> None:
    assert parse_yuan(text) == fen
    assert parse_yuan(text, blank=0) == fen


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("abc", "amount_invalid"),
        ("1e5", "amount_invalid"),
        ("NaN", "amount_invalid"),
        ("Infinity", "amount_invalid"),
        ("1.2.3", "amount_invalid"),
        ("12,34", "amount_invalid"),  # a comma that does not group thousands
        ("1,2,3", "amount_invalid"),
        ("1.234,50", "amount_invalid"),
        ("+5", "amount_invalid"),  # a spreadsheet reads it as a formula
        ("¥-5", "amount_invalid"),
        ("-", "amount_invalid"),
        ("٥", "amount_invalid"),  # a digit, but not one NFKC folds to 0-9
        ("1" * 16, "amount_invalid"),
        ("-1.00", "amount_negative"),
        ("-¥0.01", "amount_negative"),
        ("1.005", "amount_fraction"),
        ("0.001", "amount_fraction"),
        # 30 digits: the default decimal context (28) would round this to a whole number
        ("100000000000000.000000000000001", "amount_fraction"),
        ("999999999999999.999999999999999", "amount_fraction"),
    ],
)
def test_what_is_no_amount_is_an_amount_error_with_its_code(text: str, code: str) -> None:
    with pytest.raises(AmountError) as raised:
        parse_yuan(text)
    assert raised.value.code == code


def test_the_command_line_reads_yuan_and_refuses_a_blank() -> None:
    # What onecard-central's YUAN arguments get: the defaults (no cap, blank refused).
    assert parse_yuan("12.5") == 1250
    assert parse_yuan("¥1,200.00") == 120000
    assert parse_yuan(".5") == 50
    assert issubclass(AmountError, ValueError)  # what the command line's callback catches
    for text, code in (("1.234", "amount_fraction"), ("abc", "amount_invalid")):
        with pytest.raises(AmountError) as raised:
            parse_yuan(text)
        assert raised.value.code == code
    with pytest.raises(ValueError, match="at most 2 decimals"):
        parse_yuan("12.505")
    with pytest.raises(AmountError, match="no amount given") as blank:
        parse_yuan("")
    assert blank.value.code == "amount_invalid"
    assert parse_yuan("9" * 15) == 10**17 - 100  # no cap by default


def test_blank_is_what_the_caller_says_and_a_sign_alone_is_never_blank() -> None:
    for text in ("", "  ", "¥", "￥", "元", "CNY"):
        assert parse_yuan(text, blank=0) == 0
        assert parse_yuan(text, blank=7) == 7
        with pytest.raises(AmountError):
            parse_yuan(text)
    with pytest.raises(AmountError):
        parse_yuan("-", blank=0)


def test_the_cap_is_inclusive_and_its_message_names_it() -> None:
    assert parse_yuan("100000", cap=CAP) == CAP
    with pytest.raises(AmountError, match=r"above the cap of 100000\.00") as raised:
        parse_yuan("100000.01", cap=CAP)
    assert raised.value.code == "amount_too_large"


def test_a_long_text_is_clipped_in_the_message() -> None:
    with pytest.raises(AmountError) as raised:
        parse_yuan("x" * 1000)
    assert len(str(raised.value)) < 80


def test_fen_are_written_as_yuan_with_two_decimals() -> None:
    assert format_yuan(1250) == "12.50"
    assert format_yuan(5) == "0.05"
    assert format_yuan(0) == "0.00"
    assert format_yuan(-5) == "-0.05"
    assert format_yuan(-123456) == "-1234.56"


@given(st.integers(-(10**12), 10**12))
def test_yuan_text_is_exactly_the_fen(fen: int) -> None:
    text = format_yuan(fen)
    assert Decimal(text) * 100 == fen
    assert len(text.partition(".")[2]) == 2


@given(st.integers(min_value=0, max_value=10**17 - 1))
def test_fen_round_trip_through_their_yuan_text(fen: int) -> None:
    assert parse_yuan(format_yuan(fen)) == fen


@given(
    fen=st.integers(min_value=0, max_value=10**15),
    prefix=st.sampled_from(["", "¥", "￥", "CNY", "RMB ", "¥ "]),
    suffix=st.sampled_from(["", "元", " 元"]),
    grouped=st.booleans(),
    full_width=st.booleans(),
)
def test_fen_round_trip_through_yuan_text_as_people_write_it(
    fen: int, prefix: str, suffix: str, grouped: bool, full_width: bool
) -> None:
    whole, _, part = format_yuan(fen).partition(".")
    number = f"{int(whole):,}.{part}" if grouped else f"{whole}.{part}"
    if full_width:
        number = number.translate({ord(c): ord(c) + 0xFEE0 for c in "0123456789.,"})
    assert parse_yuan(f"{prefix}{number}{suffix}") == fen


@given(
    st.integers(min_value=0, max_value=99_999),
    st.text(alphabet=string.digits, min_size=0, max_size=2),
    st.sampled_from(["", "¥", "￥"]),
)
def test_any_yuan_text_with_at_most_two_decimals_is_exact(
    whole: int, decimals: str, currency: str
) -> None:
    text = f"{currency}{whole}" + (f".{decimals}" if decimals else "")
    assert parse_yuan(text) == int(Decimal(f"{whole}.{decimals or '0'}") * 100)
    assert format_yuan(parse_yuan(text)) == f"{Decimal(f'{whole}.{decimals or 0}'):.2f}"


@given(st.text(max_size=40), st.sampled_from([None, 0]), st.sampled_from([None, CAP]))
def test_any_text_is_an_amount_or_an_amount_error(
    text: str, blank: int | None, cap: int | None
) -> None:
    try:
        fen, code = parse_yuan(text, cap=cap, blank=blank), ""
    except AmountError as exc:
        fen, code = 0, exc.code
    assert code in {"", *CODES}
    assert 0 <= fen <= (CAP if cap is not None else 10**17)
