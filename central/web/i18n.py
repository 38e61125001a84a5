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
        "nav.people": "People & cards",
        "nav.blacklist": "Blacklist",
        "people.title": "People & cards",
        "people.search": "Name, staff/member number or card UID",
        "people.search_hint": "e.g. Zhang Wei, S0012, 04A1B2C3D4E5F6",
        "people.search_go": "Search",
        "people.none": "Nobody matches “{q}”.",
        "people.start": "Search for a person by name, staff/member number or card UID.",
        "people.name": "Name",
        "people.number": "Staff/member no.",
        "people.kind": "Kind",
        "people.kind.staff": "Staff",
        "people.kind.member": "Member",
        "people.department": "Department",
        "people.id": "Person ID",
        "people.not_found": "There is no person {id}.",
        "people.accepted": "Done.",
        "people.refused": "Refused:",
        "people.replayed": (
            "This form had been submitted already; nothing was done again."
            " The first result is shown."
        ),
        "people.done.money.recharge": "The recharge was applied.",
        "people.done.card.report_lost": "The card is reported lost and on the blacklist.",
        "people.cash": "Cash",
        "people.subsidy": "Subsidy",
        "people.deposit": "Deposit",
        "people.subsidy_expires": "expires {at}",
        "people.limits": "Limits",
        "people.txn_limit": "per purchase",
        "people.daily_limit": "per day",
        "people.cards": "Cards",
        "people.no_cards": "No cards.",
        "people.uid": "Card UID",
        "people.card_type": "Type",
        "people.status": "Status",
        "people.blacklist": "Blacklist",
        "people.since": "since {at}",
        "people.not_listed": "not listed",
        "people.valid_to": "Valid to",
        "people.actions": "Actions",
        "people.report_lost": "Report lost",
        "people.lost_confirm": "I have checked: card {uid} is lost",
        "people.recharge": "Recharge",
        "people.no_live_card": "This person has no active card to recharge.",
        "people.card": "Card",
        "people.amount": "Amount (yuan)",
        "people.method": "Paid by",
        "people.pay_ref": "Payment reference",
        "people.recharge_confirm": (
            "I have checked the amount and that the money was received from {name}"
        ),
        "people.recharge_go": "Recharge",
        "people.not_confirmed": "Tick the confirmation box to go ahead. Nothing was done.",
        "people.stale_form": "This form is out of date. Reload the page and try again.",
        "people.method_invalid": "Choose how it was paid.",
        "people.amount_invalid": "Enter an amount in yuan, such as 100 or 12.50.",
        "people.amount_negative": "The amount cannot be negative.",
        "people.amount_fraction": "The amount has a fraction of a fen; use at most two decimals.",
        "people.amount_too_large": "The amount is above ¥{cap}.",
        "people.invalid_request": "The request is not valid: {detail}",
        "people.tickets": "Tickets",
        "people.no_tickets": "No tickets.",
        "people.ticket": "Ticket",
        "people.service": "Service",
        "people.ticket_kind": "Kind",
        "people.remaining": "Uses left",
        "people.valid": "Valid",
        "people.ledger": "Recent transactions",
        "people.no_ledger": "No transactions yet.",
        "people.entry_kind": "Kind",
        "people.where": "Where",
        "people.ref": "Reference",
        "ticket.kind.count": "Count",
        "ticket.kind.period": "Period",
        "method.cash": "Cash",
        "method.bank": "Bank",
        "method.online": "Online",
        "card.status.active": "Active",
        "card.status.lost": "Lost",
        "card.status.frozen": "Frozen",
        "card.status.cancelled": "Cancelled",
        "card.status.replaced": "Replaced",
        "blacklist.title": "Blacklist",
        "blacklist.summary": (
            "Version v{version} · {entries} cards listed · {current} of {total} sites up to date"
        ),
        "blacklist.sites": "Sites",
        "blacklist.applied": "Applied",
        "blacklist.head": "Current",
        "blacklist.lag": "Lag",
        "blacklist.entries": "Listed cards",
        "blacklist.empty": "No cards are on the blacklist.",
        "blacklist.reason": "Reason",
        "blacklist.since": "Since",
        "blacklist.version": "Version",
        "blacklist.reason.lost": "Lost",
        "blacklist.reason.cancelled": "Cancelled",
        "blacklist.reason.replaced": "Replaced",
        "blacklist.reason.frozen": "Frozen",
        "blacklist.reason.fraud": "Fraud",
        "blacklist.reason.restored": "Restored",
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
        "nav.people": "人员与卡",
        "nav.blacklist": "黑名单",
        "people.title": "人员与卡",
        "people.search": "姓名、工号/会员号或卡号",
        "people.search_hint": "例如 张伟、S0012、04A1B2C3D4E5F6",
        "people.search_go": "查询",
        "people.none": "没有与“{q}”匹配的人员。",
        "people.start": "按姓名、工号/会员号或卡号查询人员。",
        "people.name": "姓名",
        "people.number": "工号/会员号",
        "people.kind": "类别",
        "people.kind.staff": "员工",
        "people.kind.member": "会员",
        "people.department": "部门",
        "people.id": "人员编号",
        "people.not_found": "没有人员 {id}。",
        "people.accepted": "已完成。",
        "people.refused": "被拒绝：",
        "people.replayed": "此表单已提交过，未重复执行。以下为首次结果。",
        "people.done.money.recharge": "充值已入账。",
        "people.done.card.report_lost": "已挂失，卡已列入黑名单。",
        "people.cash": "现金",
        "people.subsidy": "补贴",
        "people.deposit": "押金",
        "people.subsidy_expires": "{at} 到期",
        "people.limits": "限额",
        "people.txn_limit": "单笔",
        "people.daily_limit": "每日",
        "people.cards": "卡片",
        "people.no_cards": "没有卡片。",
        "people.uid": "卡号",
        "people.card_type": "卡类型",
        "people.status": "状态",
        "people.blacklist": "黑名单",
        "people.since": "自 {at}",
        "people.not_listed": "未列入",
        "people.valid_to": "有效期至",
        "people.actions": "操作",
        "people.report_lost": "挂失",
        "people.lost_confirm": "我已核实：卡 {uid} 已丢失",
        "people.recharge": "充值",
        "people.no_live_card": "此人没有可充值的正常卡。",
        "people.card": "卡片",
        "people.amount": "金额（元）",
        "people.method": "支付方式",
        "people.pay_ref": "支付凭证号",
        "people.recharge_confirm": "我已核对金额，并已收到 {name} 的款项",
        "people.recharge_go": "充值",
        "people.not_confirmed": "请勾选确认框后再提交。未执行任何操作。",
        "people.stale_form": "此表单已过期。请刷新页面后重试。",
        "people.method_invalid": "请选择支付方式。",
        "people.amount_invalid": "请输入以元为单位的金额，例如 100 或 12.50。",
        "people.amount_negative": "金额不能为负数。",
        "people.amount_fraction": "金额最多两位小数。",
        "people.amount_too_large": "金额超过 ¥{cap}。",
        "people.invalid_request": "请求无效：{detail}",
        "people.tickets": "票券",
        "people.no_tickets": "没有票券。",
        "people.ticket": "票券",
        "people.service": "服务",
        "people.ticket_kind": "类别",
        "people.remaining": "剩余次数",
        "people.valid": "有效期",
        "people.ledger": "最近交易",
        "people.no_ledger": "暂无交易。",
        "people.entry_kind": "类型",
        "people.where": "地点",
        "people.ref": "凭证",
        "ticket.kind.count": "计次",
        "ticket.kind.period": "期限",
        "method.cash": "现金",
        "method.bank": "银行",
        "method.online": "线上",
        "card.status.active": "正常",
        "card.status.lost": "挂失",
        "card.status.frozen": "冻结",
        "card.status.cancelled": "已退卡",
        "card.status.replaced": "已补卡",
        "blacklist.title": "黑名单",
        "blacklist.summary": (
            "版本 v{version} · {entries} 张卡 · {total} 家门店中 {current} 家已同步"
        ),
        "blacklist.sites": "门店",
        "blacklist.applied": "已应用",
        "blacklist.head": "当前",
        "blacklist.lag": "落后",
        "blacklist.entries": "黑名单卡片",
        "blacklist.empty": "黑名单中没有卡片。",
        "blacklist.reason": "原因",
        "blacklist.since": "生效时间",
        "blacklist.version": "版本",
        "blacklist.reason.lost": "挂失",
        "blacklist.reason.cancelled": "退卡",
        "blacklist.reason.replaced": "补卡",
        "blacklist.reason.frozen": "冻结",
        "blacklist.reason.fraud": "欺诈",
        "blacklist.reason.restored": "恢复",
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
