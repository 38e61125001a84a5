"""Build and parse the MQTT topics of the architecture brief.

Every topic lives under ``onecard/v1``::

    onecard/v1/site/{site}/up/{records|state|health|logs|reply}     edge → central
    onecard/v1/site/{site}/down/{ack|feed|cmd}                       central → edge
    onecard/v1/broadcast/blacklist                                   central → all
    onecard/v1/central/state                                         central → all

Site ids become MQTT usernames, ACL ``%u`` substitutions, file names and URL path segments,
so they are restricted to a charset that is safe in all of those: upper-case ASCII letters,
digits and ``-``; 2 to 32 characters; starting and ending with a letter or digit; no ``--``.
Examples: ``SZ-FUTIAN``, ``BJ01``, ``CANTEEN-3``. Lower case is rejected rather than folded,
so one branch can never appear under two spellings.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from protocol.errors import TopicError

PREFIX = "onecard/v1"
SITE_ID_REGEX = r"[A-Z0-9](?:[A-Z0-9]|-(?!-)){0,30}[A-Z0-9]"
#: Anchored form for validators that search (msgspec ``Meta(pattern=…)``).
SITE_ID_PATTERN = rf"^{SITE_ID_REGEX}\Z"
_SITE_ID_RE = re.compile(SITE_ID_REGEX)
#: MQTT shared-subscription group that central workers join to share ingest.
SHARE_GROUP = "central"


class Channel(enum.StrEnum):
    """The last segments of a topic: what flows on it."""

    UP_RECORDS = "up/records"
    UP_STATE = "up/state"
    UP_HEALTH = "up/health"
    UP_LOGS = "up/logs"
    UP_REPLY = "up/reply"
    DOWN_ACK = "down/ack"
    DOWN_FEED = "down/feed"
    DOWN_CMD = "down/cmd"
    BLACKLIST = "broadcast/blacklist"
    CENTRAL_STATE = "central/state"

    @property
    def is_site(self) -> bool:
        """True for per-site channels (the topic names a site)."""
        return self.value.startswith(("up/", "down/"))

    @property
    def is_uplink(self) -> bool:
        """True for channels an edge publishes on."""
        return self.value.startswith("up/")


_SITE_CHANNELS = {c.value: c for c in Channel if c.is_site}
_GLOBAL_CHANNELS = {f"{PREFIX}/{c.value}": c for c in Channel if not c.is_site}


@dataclass(frozen=True, slots=True)
class Topic:
    """A parsed topic: its channel and, for per-site channels, the site id."""

    channel: Channel
    site: str | None = None

    def __str__(self) -> str:
        if self.site is None:
            return f"{PREFIX}/{self.channel.value}"
        return f"{PREFIX}/site/{self.site}/{self.channel.value}"


def is_valid_site_id(site: str) -> bool:
    """Whether ``site`` matches the documented site id charset."""
    return bool(_SITE_ID_RE.fullmatch(site))


def check_site_id(site: str) -> str:
    """Return ``site`` unchanged, or raise :class:`TopicError` saying why it is not valid."""
    if not isinstance(site, str):
        raise TopicError(f"site id must be a string, not {type(site).__name__}")
    if not is_valid_site_id(site):
        raise TopicError(
            f"invalid site id {site!r}: use 2-32 characters A-Z, 0-9 and '-', "
            "starting and ending with a letter or digit, no '--'"
        )
    return site


def site_topic(site: str, channel: Channel) -> str:
    """The topic string of a per-site channel, e.g. ``site_topic("BJ01", Channel.UP_RECORDS)``."""
    if not channel.is_site:
        raise TopicError(f"{channel.value} is not a per-site channel")
    return str(Topic(channel, check_site_id(site)))


def global_topic(channel: Channel) -> str:
    """The topic string of a channel that names no site (blacklist, central state)."""
    if channel.is_site:
        raise TopicError(f"{channel.value} needs a site id")
    return str(Topic(channel))


def site_filter(channel: Channel, *, shared: bool = False) -> str:
    """Subscription filter for ``channel`` across all sites (``…/site/+/up/records``).

    With ``shared=True`` it is an MQTT v5 shared subscription in the ``central`` group, so
    several central workers split the messages between them.
    """
    if not channel.is_site:
        raise TopicError(f"{channel.value} is not a per-site channel")
    topic = f"{PREFIX}/site/+/{channel.value}"
    return f"$share/{SHARE_GROUP}/{topic}" if shared else topic


def parse_topic(topic: str) -> Topic:
    """Parse a received topic; raise :class:`TopicError` for anything not of the contract.

    Rejected: another prefix, unknown channels, empty or extra segments, wildcards or other
    characters outside the site id charset where a site id belongs.
    """
    if not isinstance(topic, str):
        raise TopicError(f"topic must be a string, not {type(topic).__name__}")
    if len(topic) > 256:
        raise TopicError(f"topic too long ({len(topic)} characters)")
    if "+" in topic or "#" in topic:
        raise TopicError(f"wildcard in topic name {topic!r}")
    if topic in _GLOBAL_CHANNELS:
        return Topic(_GLOBAL_CHANNELS[topic])
    parts = topic.split("/")
    if len(parts) != 6 or f"{parts[0]}/{parts[1]}" != PREFIX or parts[2] != "site":
        raise TopicError(f"not an onecard/v1 topic: {topic!r}")
    channel = _SITE_CHANNELS.get(f"{parts[4]}/{parts[5]}")
    if channel is None:
        raise TopicError(f"unknown channel {parts[4]}/{parts[5]!s} in {topic!r}")
    return Topic(channel, check_site_id(parts[3]))
