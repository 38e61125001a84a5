"""Reason codes of every edge decision, and the text a terminal shows for them.

A :class:`Reason` is what goes into records (``reason``) and DECISION / RECHARGE_RESULT
frames (``code``): a machine code matching ``^[a-z][a-z0-9_]{0,31}$``. Its display text is
rendered here, in Chinese and English, to fit a small terminal screen: at most
:data:`MAX_DISPLAY_LINES` lines of at most :data:`MAX_LINE_CHARS` characters, and at most
:data:`MAX_DISPLAY_CHARS` characters in all (``\\n`` included).

Texts are chosen from a chain of templates, most informative first (``"余额不足\\n余额{balance}"``
before ``"余额不足"``). :func:`render` takes the first template whose parameters were all given
and whose result fits, so a display always fits however large an amount or long a name is.
"""

from __future__ import annotations

import enum
import functools
import re
import string
from typing import Literal, NamedTuple

#: Limits of a terminal display (the protocol allows 80 characters; small LCDs show less).
MAX_DISPLAY_CHARS = 40
MAX_DISPLAY_LINES = 2
MAX_LINE_CHARS = 20
#: Where a reason code goes: records and frames validate against this pattern.
CODE_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,31}\Z")
#: A name on a display is cut to this many characters (the rest of the line is the time).
MAX_NAME_CHARS = 8


class Reason(enum.StrEnum):
    """Why a decision came out the way it did. ``ok`` is the code of a plain success;
    ``duplicate_punch``, ``already_committed`` (a repeated commit) and ``already_aborted`` (a
    repeated abort) also come with ``ok=True`` — act on ``ok``, never on the code."""

    OK = "ok"
    # the card
    UNKNOWN_CARD = "unknown_card"
    BLACKLISTED = "blacklisted"
    LOST = "lost"
    FROZEN = "frozen"
    CANCELLED = "cancelled"
    REPLACED = "replaced"
    NOT_YET_VALID = "not_yet_valid"
    EXPIRED = "expired"
    # doors and clocks
    NO_ACCESS = "no_access"
    OUTSIDE_TIME_ZONE = "outside_time_zone"
    ANTI_PASSBACK = "anti_passback"
    DUPLICATE_PUNCH = "duplicate_punch"
    # sales
    INSUFFICIENT_FUNDS = "insufficient_funds"
    TXN_LIMIT = "txn_limit"
    DAILY_LIMIT = "daily_limit"
    MEAL_LIMIT = "meal_limit"
    OFFLINE_LIMIT = "offline_limit"
    OFFLINE_TOO_LONG = "offline_too_long"
    TICKET_USED_UP = "ticket_used_up"
    TICKET_EXPIRED = "ticket_expired"
    # recharges
    RECHARGE_NOT_ALLOWED = "recharge_not_allowed"
    UNKNOWN_PAYMENT = "unknown_payment"
    DUPLICATE_PAYMENT = "duplicate_payment"
    ALREADY_COMMITTED = "already_committed"
    ALREADY_ABORTED = "already_aborted"
    # anything
    AMOUNT_INVALID = "amount_invalid"
    NOT_ALLOWED = "not_allowed"
    #: Not produced by a decision: the session layer's answer when it could not decide at all
    #: (store unavailable); nothing happened and the cardholder may try again.
    INTERNAL = "internal"
    #: Not produced by a decision: the edge's disk is below its reserve (new money refused
    #: before anything is written) or full (nothing can be recorded). Nothing happened.
    DISK_FULL = "disk_full"
    #: Not produced by a decision: a ``fail_mode = safe`` door opened although the edge could
    #: not decide at all (its store unreadable).
    FAIL_SAFE = "fail_safe"


#: Which screen a reason is shown on, where one code reads differently per operation
#: (``ok`` at a door is "请通行", at a till "消费¥12.00 …"; ``expired`` of a card or of an
#: access right).
Context = Literal["door", "access", "punch", "sale", "ticket", "pass", "prepare", "commit", "abort"]


class Display(NamedTuple):
    """A rendered display text in both languages."""

    zh: str
    en: str


#: The bare text of every reason: no parameters, always fits.
REASON_TEXT: dict[Reason, Display] = {
    Reason.OK: Display("成功", "OK"),
    Reason.UNKNOWN_CARD: Display("无效卡", "Unknown card"),
    Reason.BLACKLISTED: Display("此卡已禁用\n请联系管理员", "Card blocked\nPlease see staff"),
    Reason.LOST: Display("卡已挂失", "Card reported lost"),
    Reason.FROZEN: Display("卡已冻结\n请联系管理员", "Card frozen\nPlease see staff"),
    Reason.CANCELLED: Display("卡已注销", "Card cancelled"),
    Reason.REPLACED: Display("卡已补办\n请使用新卡", "Card replaced\nUse your new card"),
    Reason.NOT_YET_VALID: Display("卡未生效", "Card not yet valid"),
    Reason.EXPIRED: Display("卡已过期", "Card expired"),
    Reason.NO_ACCESS: Display("无权通行", "No access"),
    Reason.OUTSIDE_TIME_ZONE: Display("非通行时段", "Not allowed now"),
    Reason.ANTI_PASSBACK: Display("反潜回限制\n请先刷卡出门", "Anti-passback\nBadge out first"),
    Reason.DUPLICATE_PUNCH: Display("已打卡", "Already punched"),
    Reason.INSUFFICIENT_FUNDS: Display("余额不足", "Insufficient funds"),
    Reason.TXN_LIMIT: Display("超出单笔限额", "Over per-sale limit"),
    Reason.DAILY_LIMIT: Display("超出当日限额", "Over daily limit"),
    Reason.MEAL_LIMIT: Display("本餐次已达上限", "Meal limit reached"),
    Reason.OFFLINE_LIMIT: Display("超出离线限额", "Offline cap reached"),
    Reason.OFFLINE_TOO_LONG: Display(
        "离线时间过长\n暂停消费充值", "Offline too long\nPayments paused"
    ),
    Reason.TICKET_USED_UP: Display("次票已用完", "Ticket used up"),
    Reason.TICKET_EXPIRED: Display("票已过期", "Ticket expired"),
    Reason.RECHARGE_NOT_ALLOWED: Display("暂不能充值", "Recharge unavailable"),
    Reason.UNKNOWN_PAYMENT: Display(
        "无此充值单\n请联系管理员", "Unknown payment\nPlease see staff"
    ),
    Reason.DUPLICATE_PAYMENT: Display("支付单号重复", "Payment ref reused"),
    Reason.ALREADY_COMMITTED: Display("充值已完成", "Already credited"),
    Reason.ALREADY_ABORTED: Display("充值已取消", "Recharge cancelled"),
    Reason.AMOUNT_INVALID: Display("金额无效", "Invalid amount"),
    Reason.NOT_ALLOWED: Display("不允许此操作", "Not allowed"),
    Reason.INTERNAL: Display("系统繁忙\n请重试", "System busy\nPlease try again"),
    Reason.FAIL_SAFE: Display("请通行", "Please enter"),
    Reason.DISK_FULL: Display("存储空间不足\n暂停消费充值", "Storage full\nPayments paused"),
}

# Templates tried before the bare text, most informative first. Placeholders: {amount},
# {balance}, {limit} (money, rendered by `yuan`), {count}, {remaining} (integers), {meal},
# {clock} ("HH:MM"), {name} (cut to MAX_NAME_CHARS), {until} (a local date "2026-06-30").
_TEMPLATES: dict[tuple[Reason, Context | None], tuple[Display, ...]] = {
    (Reason.OK, "door"): (Display("请通行", "Welcome"),),
    (Reason.OK, "punch"): (
        Display("打卡成功\n{name} {clock}", "Punch recorded\n{name} {clock}"),
        Display("打卡成功\n{clock}", "Punch recorded\n{clock}"),
        Display("打卡成功", "Punch recorded"),
    ),
    (Reason.OK, "sale"): (
        Display("消费{amount}\n余额{balance}", "Paid {amount}\nBalance {balance}"),
        Display("消费{amount}", "Paid {amount}"),
        Display("消费成功", "Paid"),
    ),
    (Reason.OK, "ticket"): (
        Display("次票消费\n剩余{remaining}次", "Ticket used\n{remaining} left"),
        Display("次票消费", "Ticket used"),
    ),
    (Reason.OK, "pass"): (
        Display("期限票有效\n至{until}", "Pass valid\nuntil {until}"),
        Display("期限票有效", "Pass valid"),
    ),
    (Reason.OK, "prepare"): (
        Display("请付款{amount}", "Please pay {amount}"),
        Display("请付款", "Please pay"),
    ),
    (Reason.OK, "commit"): (
        Display("充值成功{amount}\n余额{balance}", "Credited {amount}\nBalance {balance}"),
        Display("充值成功\n余额{balance}", "Credited\nBalance {balance}"),
        Display("充值成功", "Credited"),
    ),
    (Reason.OK, "abort"): (Display("充值已取消", "Recharge cancelled"),),
    (Reason.EXPIRED, "access"): (Display("通行权限已过期", "Access expired"),),
    (Reason.NOT_YET_VALID, "access"): (Display("通行权限未生效", "Access not yet valid"),),
    (Reason.DUPLICATE_PUNCH, None): (Display("已打卡\n{clock}", "Already punched\nat {clock}"),),
    (Reason.INSUFFICIENT_FUNDS, None): (
        Display("余额不足\n余额{balance}", "Insufficient funds\nBalance {balance}"),
    ),
    (Reason.TXN_LIMIT, None): (
        Display("超出单笔限额\n限额{limit}", "Over per-sale limit\nLimit {limit}"),
    ),
    (Reason.DAILY_LIMIT, None): (
        Display("超出当日限额\n限额{limit}", "Over daily limit\nLimit {limit}"),
    ),
    (Reason.MEAL_LIMIT, None): (
        Display("本餐次已达上限\n{meal}限{count}次", "Meal limit reached\n{meal}: max {count}"),
        Display("本餐次已达上限\n{meal}限额{limit}", "Meal limit reached\n{meal}: max {limit}"),
        Display("本餐次已达上限\n限{count}次", "Meal limit reached\nmax {count}"),
        Display("本餐次已达上限\n限额{limit}", "Meal limit reached\nmax {limit}"),
    ),
    (Reason.OFFLINE_LIMIT, None): (
        Display("超出离线限额\n限额{limit}", "Offline cap reached\nLimit {limit}"),
    ),
    (Reason.TICKET_USED_UP, None): (
        Display("次票已用完\n余额{balance}", "Ticket used up\nBalance {balance}"),
    ),
    (Reason.TICKET_EXPIRED, None): (
        Display("票已过期\n余额{balance}", "Ticket expired\nBalance {balance}"),
    ),
    (Reason.ALREADY_COMMITTED, None): (
        Display("充值已完成\n{amount}", "Already credited\n{amount}"),
    ),
    (Reason.AMOUNT_INVALID, None): (
        Display("金额无效\n上限{limit}", "Invalid amount\nMax {limit}"),
    ),
}

_FORMATTER = string.Formatter()


@functools.lru_cache(maxsize=256)  # the templates are a fixed, small set
def _fields(template: str) -> frozenset[str]:
    return frozenset(name for _, name, _, _ in _FORMATTER.parse(template) if name)


def yuan(fen: int) -> str:
    """Fen as a display amount: ``1234`` → ``"¥12.34"``, ``-5`` → ``"-¥0.05"``."""
    sign = "-" if fen < 0 else ""
    return f"{sign}¥{abs(fen) // 100}.{abs(fen) % 100:02d}"


def fits_display(text: str) -> bool:
    """True if ``text`` fits a terminal display (lines, line width and total length)."""
    lines = text.split("\n")
    return (
        len(text) <= MAX_DISPLAY_CHARS
        and len(lines) <= MAX_DISPLAY_LINES
        and all(len(line) <= MAX_LINE_CHARS for line in lines)
    )


def _pick(templates: list[str], params: dict[str, str]) -> str:
    given = params.keys()
    for template in templates:
        if _fields(template) <= given:
            text = template.format_map(params)
            if fits_display(text):
                return text
    # Unreachable for the shipped tables (the last template is the bare text, which the
    # tests prove fits); kept so a bad template degrades to a short text, never overflows.
    return templates[-1][:MAX_LINE_CHARS]


def render(
    reason: Reason,
    context: Context | None = None,
    *,
    amount_fen: int | None = None,
    balance_fen: int | None = None,
    limit_fen: int | None = None,
    count: int | None = None,
    remaining: int | None = None,
    meal: str | None = None,
    clock: str | None = None,
    name: str | None = None,
    until: str | None = None,
) -> Display:
    """The display for ``reason`` on a ``context`` screen, in Chinese and English.

    Each language independently uses the most informative template whose parameters are all
    given (``None`` = not given) and whose text fits (:func:`fits_display`); otherwise the
    reason's bare text. The result always fits. Money is fen, shown as ``¥12.34``.
    """
    params: dict[str, str] = {}
    for key, fen in (("amount", amount_fen), ("balance", balance_fen), ("limit", limit_fen)):
        if fen is not None:
            params[key] = yuan(fen)
    for key, number in (("count", count), ("remaining", remaining)):
        if number is not None:
            params[key] = str(number)
    for key, text in (("meal", meal), ("clock", clock), ("until", until)):
        if text:
            params[key] = _one_line(text)
    if name:
        params["name"] = _one_line(name)[:MAX_NAME_CHARS]
    specific = _TEMPLATES.get((reason, context), ()) if context is not None else ()
    chain = [*specific, *_TEMPLATES.get((reason, None), ()), REASON_TEXT[reason]]
    return Display(
        zh=_pick([d.zh for d in chain], params),
        en=_pick([d.en for d in chain], params),
    )


def _one_line(text: str) -> str:
    # A name or label from master data must not add lines or control characters to a screen.
    return "".join(ch if ch.isprintable() else " " for ch in text).strip()
