"""MQTT topics: every channel builds and parses back, anything else is a TopicError."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import ProtocolError, TopicError
from protocol.topics import (
    PREFIX,
    SHARE_GROUP,
    Channel,
    Topic,
    check_site_id,
    global_topic,
    is_valid_site_id,
    parse_topic,
    site_filter,
    site_topic,
)

SITE_CHANNELS = [c for c in Channel if c.is_site]
GLOBAL_CHANNELS = [c for c in Channel if not c.is_site]
SITE_ALNUM = string.ascii_uppercase + string.digits


def spec_site_id(text: str) -> bool:
    """The site id rule as the module docstring states it, written out independently."""
    return (
        2 <= len(text) <= 32
        and all(ch in SITE_ALNUM or ch == "-" for ch in text)
        and not text.startswith("-")
        and not text.endswith("-")
        and "--" not in text
    )


#: Valid site ids: runs of A-Z0-9 joined by single dashes, 2..32 characters.
site_ids = (
    st.lists(st.text(alphabet=SITE_ALNUM, min_size=1, max_size=10), min_size=1, max_size=6)
    .map("-".join)
    .filter(lambda s: 2 <= len(s) <= 32)
)


# --- building and parsing ----------------------------------------------------------------


def test_channels_split_into_per_site_and_global() -> None:
    assert set(GLOBAL_CHANNELS) == {Channel.BLACKLIST, Channel.CENTRAL_STATE}
    assert {c for c in Channel if c.is_uplink} == {
        Channel.UP_RECORDS,
        Channel.UP_STATE,
        Channel.UP_HEALTH,
        Channel.UP_LOGS,
        Channel.UP_REPLY,
    }


@pytest.mark.parametrize("channel", SITE_CHANNELS, ids=str)
def test_site_topic_round_trips_through_parse_topic(channel: Channel) -> None:
    topic = site_topic("SZ-FUTIAN", channel)

    assert topic == f"onecard/v1/site/SZ-FUTIAN/{channel.value}"
    assert parse_topic(topic) == Topic(channel, "SZ-FUTIAN")
    assert str(parse_topic(topic)) == topic


@pytest.mark.parametrize("channel", GLOBAL_CHANNELS, ids=str)
def test_global_topic_round_trips_through_parse_topic(channel: Channel) -> None:
    topic = global_topic(channel)

    assert topic == f"onecard/v1/{channel.value}"
    assert parse_topic(topic) == Topic(channel)
    assert parse_topic(topic).site is None
    assert str(parse_topic(topic)) == topic


def test_documented_topics_parse_to_their_channels() -> None:
    assert parse_topic("onecard/v1/site/BJ01/up/records") == Topic(Channel.UP_RECORDS, "BJ01")
    assert parse_topic("onecard/v1/site/CANTEEN-3/down/cmd") == Topic(Channel.DOWN_CMD, "CANTEEN-3")
    assert parse_topic("onecard/v1/broadcast/blacklist") == Topic(Channel.BLACKLIST)
    assert parse_topic("onecard/v1/central/state") == Topic(Channel.CENTRAL_STATE)


@given(site=site_ids, channel=st.sampled_from(SITE_CHANNELS))
def test_any_valid_site_id_round_trips_on_every_site_channel(site: str, channel: Channel) -> None:
    assert is_valid_site_id(site)
    assert check_site_id(site) == site
    assert parse_topic(site_topic(site, channel)) == Topic(channel, site)


@pytest.mark.parametrize("channel", GLOBAL_CHANNELS, ids=str)
def test_site_topic_refuses_a_global_channel(channel: Channel) -> None:
    with pytest.raises(TopicError, match="not a per-site channel"):
        site_topic("BJ01", channel)


@pytest.mark.parametrize("channel", SITE_CHANNELS, ids=str)
def test_global_topic_refuses_a_per_site_channel(channel: Channel) -> None:
    with pytest.raises(TopicError, match="needs a site id"):
        global_topic(channel)


def test_site_topic_refuses_an_invalid_site_id() -> None:
    with pytest.raises(TopicError, match="invalid site id"):
        site_topic("bj01", Channel.UP_RECORDS)


# --- site ids ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "site",
    ["BJ", "BJ01", "SZ-FUTIAN", "CANTEEN-3", "A-B-C", "0" * 32, "9-9", "A" * 31 + "1"],
)
def test_site_id_accepts_documented_shapes(site: str) -> None:
    assert is_valid_site_id(site)
    assert check_site_id(site) == site


@pytest.mark.parametrize(
    ("site", "why"),
    [
        ("bj01", "lower case is rejected, not folded"),
        ("Bj01", "mixed case"),
        ("B", "too short"),
        ("", "empty"),
        ("A" * 33, "too long"),
        ("-BJ01", "leading dash"),
        ("BJ01-", "trailing dash"),
        ("BJ--01", "double dash"),
        ("-", "just a dash"),
        ("BJ_01", "underscore"),
        ("BJ 01", "space"),
        ("BJ01\n", "trailing newline"),
        ("BJ/01", "slash"),
        ("BJ+", "wildcard"),
        ("北京01", "non-ASCII"),
        ("ＢＪ01", "full-width letters"),
    ],
)
def test_site_id_rejects(site: str, why: str) -> None:
    assert not is_valid_site_id(site), why
    with pytest.raises(TopicError, match="invalid site id"):
        check_site_id(site)


@pytest.mark.parametrize("site", [None, 1, b"BJ01", ["BJ01"]])
def test_check_site_id_rejects_non_str_with_topic_error(site: object) -> None:
    with pytest.raises(TopicError, match="must be a string"):
        check_site_id(site)  # type: ignore[arg-type]


@given(st.text(alphabet=SITE_ALNUM + "-_ a", max_size=40))
def test_is_valid_site_id_agrees_with_the_documented_rule(text: str) -> None:
    assert is_valid_site_id(text) == spec_site_id(text)


# --- rejected topics -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "topic",
    [
        pytest.param("", id="empty"),
        pytest.param("onecard/v2/site/BJ01/up/records", id="v2"),
        pytest.param("onecard/v2/central/state", id="v2-global"),
        pytest.param("onecards/v1/site/BJ01/up/records", id="wrong-prefix"),
        pytest.param("other/v1/site/BJ01/up/records", id="foreign-prefix"),
        pytest.param("/onecard/v1/site/BJ01/up/records", id="leading-slash"),
        pytest.param("ONECARD/V1/site/BJ01/up/records", id="upper-case-prefix"),
        pytest.param("onecard/v1/sites/BJ01/up/records", id="sites"),
        pytest.param("onecard/v1/site/BJ01/up/unknown", id="unknown-channel"),
        pytest.param("onecard/v1/site/BJ01/sideways/records", id="unknown-direction"),
        pytest.param("onecard/v1/site/BJ01/down/records", id="uplink-name-downward"),
        pytest.param("onecard/v1/site/BJ01/broadcast/blacklist", id="global-under-site"),
        pytest.param("onecard/v1/site/BJ01/central/state", id="central-under-site"),
        pytest.param("onecard/v1/broadcast/whitelist", id="unknown-global"),
        pytest.param("onecard/v1/central/status", id="unknown-central"),
        pytest.param("onecard/v1/site/BJ01/up/records/extra", id="extra-segment"),
        pytest.param("onecard/v1/broadcast/blacklist/extra", id="extra-global-segment"),
        pytest.param("onecard/v1/site/BJ01/up", id="missing-segment"),
        pytest.param("onecard/v1/site/up/records", id="missing-site"),
        pytest.param("onecard/v1/site//up/records", id="empty-site"),
        pytest.param("onecard/v1/site/BJ01//records", id="empty-direction"),
        pytest.param("onecard//site/BJ01/up/records", id="empty-version"),
        pytest.param("onecard/v1/site/BJ01/up/records/", id="trailing-slash"),
        pytest.param("onecard/v1/central/state/", id="trailing-slash-global"),
        pytest.param("onecard/v1/site/+/up/records", id="plus-for-site"),
        pytest.param("onecard/v1/site/#", id="hash-for-rest"),
        pytest.param("onecard/v1/site/BJ+1/up/records", id="plus-inside-site"),
        pytest.param("onecard/v1/site/BJ01/up/#", id="hash-for-channel"),
        pytest.param("onecard/v1/#", id="hash-global"),
        pytest.param("onecard/v1/site/bj01/up/records", id="lower-case-site"),
        pytest.param("onecard/v1/site/B/up/records", id="short-site"),
        pytest.param(f"onecard/v1/site/{'A' * 33}/up/records", id="long-site"),
        pytest.param("onecard/v1/site/-BJ01/up/records", id="leading-dash-site"),
        pytest.param("onecard/v1/site/BJ01-/up/records", id="trailing-dash-site"),
        pytest.param("onecard/v1/site/BJ--01/up/records", id="double-dash-site"),
        pytest.param("$share/central/onecard/v1/site/BJ01/up/records", id="shared-prefix"),
        pytest.param("onecard/v1/site/" + "A" * 300 + "/up/records", id="very-long"),
    ],
)
def test_parse_topic_rejects(topic: str) -> None:
    with pytest.raises(TopicError):
        parse_topic(topic)


@pytest.mark.parametrize("topic", [None, 42, b"onecard/v1/central/state", ["onecard"]])
def test_parse_topic_rejects_non_str_with_topic_error(topic: object) -> None:
    with pytest.raises(TopicError, match="must be a string"):
        parse_topic(topic)  # type: ignore[arg-type]


def test_topic_error_is_a_protocol_error_with_its_code() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_topic("nope")
    assert info.value.code == "bad_topic"


@given(st.text(max_size=80))
def test_parse_topic_of_any_text_round_trips_or_raises_topic_error(text: str) -> None:
    try:
        topic = parse_topic(text)
    except TopicError:
        return
    assert str(topic) == text


@given(
    st.lists(
        st.sampled_from(["onecard", "v1", "v2", "site", "BJ01", "bj01", "up", "down", "+", "#"])
        | st.sampled_from([c.value for c in Channel])
        | st.text(alphabet=SITE_ALNUM + "-/", max_size=6),
        max_size=7,
    ).map("/".join)
)
def test_parse_topic_of_topic_like_text_round_trips_or_raises_topic_error(text: str) -> None:
    try:
        topic = parse_topic(text)
    except TopicError:
        return
    assert str(topic) == text
    assert topic.channel.is_site == (topic.site is not None)


# --- subscription filters ------------------------------------------------------------------


@pytest.mark.parametrize("channel", SITE_CHANNELS, ids=str)
def test_site_filter_matches_every_site(channel: Channel) -> None:
    assert site_filter(channel) == f"{PREFIX}/site/+/{channel.value}"


@pytest.mark.parametrize("channel", SITE_CHANNELS, ids=str)
def test_shared_site_filter_joins_the_central_share_group(channel: Channel) -> None:
    assert SHARE_GROUP == "central"
    assert site_filter(channel, shared=True) == f"$share/central/onecard/v1/site/+/{channel.value}"


def test_site_filter_is_not_itself_a_parsable_topic() -> None:
    with pytest.raises(TopicError, match="wildcard"):
        parse_topic(site_filter(Channel.UP_RECORDS))


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("channel", GLOBAL_CHANNELS, ids=str)
def test_site_filter_refuses_a_global_channel(channel: Channel, shared: bool) -> None:
    with pytest.raises(TopicError, match="not a per-site channel"):
        site_filter(channel, shared=shared)
