"""Session cookies, CSRF tokens and the message catalogue, without I/O."""

from __future__ import annotations

import re
import string
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from central.web import i18n
from central.web.page import safe_next
from central.web.sessions import BadSessionError, Session, SessionCodec, new_nonce

KEY = b"k" * 32
codec = SessionCodec(KEY, idle_s=100, lifetime_s=1000)


def test_a_cookie_round_trips_and_names_no_secret():
    session = Session(7, 3, 5000, 5050)
    value = codec.encode(session)
    assert value.startswith("v1.7.3.5000.5050.")
    assert codec.decode(value, now=5100) == session


def test_a_cookie_expires_when_idle_or_too_old():
    assert codec.decode(codec.encode(Session(1, 1, 0, 950)), now=999)
    with pytest.raises(BadSessionError, match="expired"):
        codec.decode(codec.encode(Session(1, 1, 0, 900)), now=1000)  # idle 100 s
    with pytest.raises(BadSessionError, match="expired"):
        codec.decode(codec.encode(Session(1, 1, 0, 990)), now=1000)  # 1000 s after sign-in
    with pytest.raises(BadSessionError, match="expired"):
        codec.decode(codec.encode(Session(1, 1, 0, 9000)), now=1000)  # from the future


def test_another_key_or_any_changed_character_is_refused():
    value = codec.encode(Session(1, 1, 0, 0))
    other = SessionCodec(b"x" * 32, idle_s=100, lifetime_s=1000)
    with pytest.raises(BadSessionError, match="signature"):
        other.decode(value, now=1)
    for i, ch in enumerate(value):
        for new in {"0", "A", "."} - {ch}:
            with pytest.raises(BadSessionError):
                codec.decode(value[:i] + new + value[i + 1 :], now=1)


@given(st.text(alphabet=string.printable, max_size=120))
def test_garbage_is_only_ever_a_bad_session(value):
    with pytest.raises(BadSessionError):
        codec.decode(value, now=1)


def test_a_csrf_token_is_bound_to_its_nonce_and_its_session():
    nonce = new_nonce()
    token = codec.csrf_token(nonce, "7.3")
    assert codec.csrf_ok(nonce, "7.3", token)
    assert not codec.csrf_ok(nonce, "7.4", token)  # the session moved on
    assert not codec.csrf_ok(new_nonce(), "7.3", token)
    assert not codec.csrf_ok(nonce, "7.3", None)
    assert not codec.csrf_ok("short", "7.3", codec.csrf_token("short", "7.3"))
    # A session MAC is never a CSRF token (a key per purpose).
    assert codec.csrf_token(nonce, "7.3") != SessionCodec._mac(KEY, f"{nonce}|7.3")


def test_a_short_secret_is_refused():
    with pytest.raises(ValueError, match="16 bytes"):
        SessionCodec(b"short", idle_s=1, lifetime_s=1)


def test_both_languages_have_every_message_with_the_same_placeholders():
    en, zh = i18n.MESSAGES["en"], i18n.MESSAGES["zh-CN"]
    assert en.keys() == zh.keys()
    for key in en:
        assert set(re.findall(r"{(\w+)}", en[key])) == set(re.findall(r"{(\w+)}", zh[key])), key


@pytest.mark.parametrize(
    ("header", "lang"),
    [
        (None, "zh-CN"),
        ("", "zh-CN"),
        ("en-US,en;q=0.9", "en"),
        ("zh-Hant-TW", "zh-CN"),
        ("fr-FR,fr;q=0.9,en;q=0.8,zh;q=0.7", "en"),
        ("en;q=0.3,zh-CN;q=0.8", "zh-CN"),
        ("en;q=0,de", "zh-CN"),
        ("en;q=bad", "zh-CN"),
    ],
)
def test_the_language_comes_from_accept_language(header, lang):
    assert i18n.negotiate(header) == lang


def test_times_amounts_and_durations_read_as_people_write_them():
    shanghai = ZoneInfo("Asia/Shanghai")
    assert i18n.local_time(1_700_000_000_000, shanghai) == "2023-11-15 06:13:20"
    assert i18n.local_time("2023-11-14T22:13:20+00:00", shanghai) == "2023-11-15 06:13:20"
    assert i18n.local_time(None, shanghai) == "—"
    assert i18n.yuan(21050) == "¥210.50"
    assert i18n.yuan(-5) == "¥-0.05"
    assert i18n.ago(3, "en") == "just now"
    assert i18n.ago(90, "zh-CN") == "1 分钟前"
    assert i18n.duration(7200, "en") == "2 h"


@pytest.mark.parametrize(
    ("target", "safe"),
    [
        ("/audit?x=1", "/audit?x=1"),
        (None, "/"),
        ("https://evil.example/", "/"),
        ("//evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("/\nSet-Cookie:x", "/"),
    ],
)
def test_only_our_own_paths_are_followed_after_sign_in(target, safe):
    assert safe_next(target) == safe
