"""The dashboard's two languages: the message catalogue, choosing a language, and showing
times, durations and amounts the way a reader expects.

A page says ``t("overview.title")``; a new message goes into both dictionaries (a test
checks they have the same keys and placeholders). Simplified Chinese is the default.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from central.core.amounts import format_yuan

LANGUAGES: dict[str, str] = {"zh-CN": "中文", "en": "English"}
DEFAULT_LANGUAGE = "zh-CN"
LANG_COOKIE = "oc_lang"

MESSAGES: dict[str, dict[str, str]] = {
    "en": {
        "app.title": "onecard HQ",
        "nav.overview": "Overview",
        "nav.audit": "Audit log",
        "role.admin": "Administrator",
        "role.operator": "Operator",
        "role.finance": "Finance",
        "role.technician": "Technician",
        "role.auditor": "Auditor",
        "action.logout": "Sign out",
        "time.zone": "Times in {zone}",
        "login.title": "Sign in",
        "login.lead": "Sign in with your HQ account.",
        "login.username": "Username",
        "login.password": "Password",
        "login.submit": "Sign in",
        "login.failed": "Wrong username or password.",
        "login.throttled": "Too many failed sign-ins. Try again in {minutes} min.",
        "login.expired": "Your session has ended. Please sign in again.",
        "login.signed_out": "You have signed out.",
        "error.403.title": "Not allowed",
        "error.403.role": "Your role ({role}) may not open this page.",
        "error.csrf": (
            "This form has expired or did not come from this dashboard. "
            "Reload the page and try again."
        ),
        "error.404.title": "Not found",
        "error.404.text": "There is no page at this address.",
        "error.400.title": "Bad request",
        "error.400.text": "The form could not be read.",
        "error.back": "Back to the overview",
        "overview.title": "Sites",
        "overview.summary": "{online} of {total} sites online · blacklist v{blacklist}",
        "overview.empty": "No sites yet. Add one with: onecard-central site add SITE-ID",
        "overview.site": "Site",
        "overview.status": "Status",
        "overview.online": "Online",
        "overview.offline": "Offline",
        "overview.never": "Never connected",
        "overview.last_seen": "Last seen",
        "overview.version": "Version",
        "overview.outbox": "Unsynced records",
        "overview.oldest": "oldest {age}",
        "overview.feed": "Master data",
        "overview.blacklist": "Blacklist",
        "overview.behind": "{n} behind",
        "overview.current": "up to date",
        "overview.terminals": "Terminals online",
        "overview.alerts": "Open anomalies",
        "audit.title": "Audit log",
        "audit.operator": "Operator",
        "audit.action": "Action",
        "audit.target": "Target",
        "audit.outcome": "Outcome",
        "audit.any": "Any",
        "audit.accepted": "Accepted",
        "audit.rejected": "Rejected",
        "audit.filter": "Filter",
        "audit.clear": "Clear",
        "audit.time": "Time",
        "audit.role": "Role",
        "audit.source": "Source",
        "audit.ip": "Address",
        "audit.changes": "Changes",
        "audit.reason": "Reason",
        "audit.older": "Older →",
        "audit.newest": "← Newest",
        "audit.empty": "No entries match.",
        "ago.now": "just now",
        "ago.s": "{n} s ago",
        "ago.m": "{n} min ago",
        "ago.h": "{n} h ago",
        "ago.d": "{n} d ago",
        "dur.s": "{n} s",
        "dur.m": "{n} min",
        "dur.h": "{n} h",
        "dur.d": "{n} d",
    },
    "zh-CN": {
        "app.title": "一卡通总部",
        "nav.overview": "总览",
        "nav.audit": "审计日志",
        "role.admin": "管理员",
        "role.operator": "操作员",
        "role.finance": "财务",
        "role.technician": "技术员",
        "role.auditor": "审计员",
        "action.logout": "退出登录",
        "time.zone": "时间按 {zone} 显示",
        "login.title": "登录",
        "login.lead": "请使用总部账号登录。",
        "login.username": "用户名",
        "login.password": "密码",
        "login.submit": "登录",
        "login.failed": "用户名或密码错误。",
        "login.throttled": "登录失败次数过多，请 {minutes} 分钟后再试。",
        "login.expired": "会话已结束，请重新登录。",
        "login.signed_out": "您已退出登录。",
        "error.403.title": "无权访问",
        "error.403.role": "您的角色（{role}）无权打开此页面。",
        "error.csrf": "表单已过期或并非来自本系统。请刷新页面后重试。",
        "error.404.title": "页面不存在",
        "error.404.text": "此地址没有页面。",
        "error.400.title": "请求有误",
        "error.400.text": "无法读取提交的表单。",
        "error.back": "返回总览",
        "overview.title": "门店",
        "overview.summary": "{total} 家门店中 {online} 家在线 · 黑名单版本 {blacklist}",
        "overview.empty": "尚无门店。添加门店：onecard-central site add 门店编号",
        "overview.site": "门店",
        "overview.status": "状态",
        "overview.online": "在线",
        "overview.offline": "离线",
        "overview.never": "从未连接",
        "overview.last_seen": "最后在线",
        "overview.version": "版本",
        "overview.outbox": "未同步记录",
        "overview.oldest": "最早 {age}",
        "overview.feed": "主数据",
        "overview.blacklist": "黑名单",
        "overview.behind": "落后 {n}",
        "overview.current": "已同步",
        "overview.terminals": "在线终端",
        "overview.alerts": "未处理异常",
        "audit.title": "审计日志",
        "audit.operator": "操作人",
        "audit.action": "操作",
        "audit.target": "对象",
        "audit.outcome": "结果",
        "audit.any": "全部",
        "audit.accepted": "成功",
        "audit.rejected": "被拒绝",
        "audit.filter": "筛选",
        "audit.clear": "清除",
        "audit.time": "时间",
        "audit.role": "角色",
        "audit.source": "来源",
        "audit.ip": "地址",
        "audit.changes": "变更",
        "audit.reason": "原因",
        "audit.older": "更早 →",
        "audit.newest": "← 最新",
        "audit.empty": "没有符合条件的记录。",
        "ago.now": "刚刚",
        "ago.s": "{n} 秒前",
        "ago.m": "{n} 分钟前",
        "ago.h": "{n} 小时前",
        "ago.d": "{n} 天前",
        "dur.s": "{n} 秒",
        "dur.m": "{n} 分钟",
        "dur.h": "{n} 小时",
        "dur.d": "{n} 天",
    },
}


def translate(lang: str, key: str, **values: object) -> str:
    """The message ``key`` in ``lang`` (English, then the key itself, if missing)."""
    text = MESSAGES.get(lang, {}).get(key) or MESSAGES["en"].get(key) or key
    return text.format(**values) if values else text


def language_of(tag: str | None) -> str | None:
    """Our language for a language tag (``zh``, ``zh-Hans-CN``, ``en-GB`` …), or None."""
    if not tag:
        return None
    primary = tag.strip().lower().split("-")[0].split("_")[0]
    # Only Simplified Chinese is offered: it is the nearest for any Chinese reader.
    return {"zh": "zh-CN", "en": "en"}.get(primary)


def negotiate(accept_language: str | None) -> str:
    """The language an ``Accept-Language`` header prefers among ours (default zh-CN)."""
    ranked: list[tuple[float, int, str]] = []
    for index, part in enumerate((accept_language or "").split(",")[:20]):
        tag, _, params = part.partition(";")
        q = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                q = float(params[2:])
            except ValueError:
                q = 0.0
        lang = language_of(tag)
        if lang is not None and q > 0:
            ranked.append((-q, index, lang))
    return min(ranked)[2] if ranked else DEFAULT_LANGUAGE


def local_time(value: int | str | datetime | None, zone: ZoneInfo) -> str:
    """Unix ms, an ISO-8601 string or a datetime as ``YYYY-MM-DD HH:MM:SS`` in ``zone``."""
    if value is None or value == "":
        return "—"
    if isinstance(value, int):
        at = datetime.fromtimestamp(value / 1000, UTC)
    elif isinstance(value, str):
        at = datetime.fromisoformat(value)
    else:
        at = value
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")


def duration(seconds: float, lang: str) -> str:
    """``seconds`` in the largest whole unit: 45 s, 12 min, 3 h, 2 d."""
    return _units(seconds, lang, "dur")


def ago(seconds: float, lang: str) -> str:
    """How long ago: just now, 45 s ago, 12 min ago …"""
    if seconds < 5:
        return translate(lang, "ago.now")
    return _units(seconds, lang, "ago")


def _units(seconds: float, lang: str, kind: str) -> str:
    s = max(0, int(seconds))
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if s >= size:
            return translate(lang, f"{kind}.{unit}", n=s // size)
    return translate(lang, f"{kind}.s", n=s)


def yuan(fen: int | None) -> str:
    """Fen as ``¥12.50`` (``—`` for None)."""
    return "—" if fen is None else f"¥{format_yuan(fen)}"
