"""Daily clearing's exports: a :class:`~central.core.clearing.DayReport` as JSON, day
reports and the :class:`~central.core.clearing.Settlement` as CSV. Pure: values in, bytes
out.

The CSVs are for Excel (:func:`encode_csv`): UTF-8 with a BOM, CRLF, amounts in yuan
(:func:`~central.core.amounts.format_yuan`), every header in Chinese and English, and no
text cell that Excel would run as a formula. :mod:`central.core.clearing` re-exports
everything here.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import msgspec

from central.core.amounts import format_yuan

if TYPE_CHECKING:
    from central.core.clearing import DayReport, Direction, Settlement

#: How HQ's own operations are labelled in exports and messages (not a valid site id, so
#: never confused with one).
HQ_LABEL = "总部(HQ)"


def site_label(site: str | None) -> str:
    """A site as reports name it: its id, or :data:`HQ_LABEL` for HQ (None)."""
    return HQ_LABEL if site is None else site


def encode_csv(header: Sequence[str], rows: Iterable[Sequence[str | int]]) -> bytes:
    """An Excel-friendly CSV: UTF-8 with a BOM, CRLF line ends, every text cell that Excel
    would read as a formula (``=``, ``+``, ``-``, ``@`` … not followed by a number)
    defused with a leading apostrophe."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows([_cell(c) for c in row] for row in rows)
    return ("\ufeff" + out.getvalue()).encode("utf-8")


def _cell(value: str | int) -> str:
    text = str(value)
    if text[:1] in {"=", "+", "-", "@", "\t", "\r"} and not _is_number(text):
        return "'" + text
    return text


def _is_number(text: str) -> bool:
    body = text[1:] if text[:1] == "-" else text
    whole, _, part = body.partition(".")
    return whole.isdigit() and (not part or part.isdigit()) and whole.isascii()


def to_json(report: DayReport) -> bytes:
    """The report as JSON (keys sorted: the same report is always the same bytes)."""
    return msgspec.json.encode(report, order="sorted")


#: (中文, English) column names of the day CSV, then one per total (amounts in yuan).
_TOTAL_HEADERS: dict[str, str] = {
    "recharge_fen": "充值合计",
    "recharge_cash_fen": "充值-现金",
    "recharge_bank_fen": "充值-银行卡",
    "recharge_online_fen": "充值-线上",
    "recharge_unspecified_fen": "充值-未注明",
    "deposit_fen": "押金收入",
    "payout_cash_fen": "退余额",
    "payout_deposit_fen": "退押金",
    "taken_in_fen": "净收款",
    "purchase_fen": "消费合计",
    "purchase_cash_fen": "消费-现金",
    "purchase_subsidy_fen": "消费-补贴",
    "purchase_refund_fen": "退货退款",
    "correction_fen": "消费更正",
    "ticket_sale_fen": "售票",
    "consumption_fen": "净消费",
    "subsidy_granted_fen": "补贴发放",
    "subsidy_used_fen": "补贴使用",
    "subsidy_expired_fen": "补贴过期",
    "subsidy_restored_fen": "补贴恢复",
    "subsidy_forfeited_fen": "补贴销户清零",
    "fee_fen": "手续费",
    "opening_fen": "期初导入",
    "ticket_uses": "计次使用",
    "ledger_net_fen": "账户余额变动",
    "net_position_fen": "通存通兑净额",
}


def _money_header(name: str) -> str:
    zh = _TOTAL_HEADERS[name]
    if name.endswith("_fen"):
        return f"{zh}(元) {name.removesuffix('_fen')}_yuan"
    return f"{zh} {name}"


def _money(name: str, value: int) -> str | int:
    return format_yuan(value) if name.endswith("_fen") else value


def to_csv(reports: Iterable[DayReport]) -> bytes:
    """One row per site-day (sorted by site, HQ first, then day): amounts in yuan."""
    # Deferred: central.core.clearing re-exports this module, so importing it up top
    # would be circular.
    from central.core.clearing import TOTAL_FIELDS  # noqa: PLC0415

    header = [
        "站点 site",
        "营业日 business_day",
        "时区 timezone",
        "日切 cutoff_hour",
        "版本 revision",
        "笔数 entries",
        *(_money_header(name) for name in TOTAL_FIELDS),
        "摘要 digest",
    ]
    ordered = sorted(reports, key=lambda r: (r.site is not None, r.site or "", r.business_day))
    rows = (
        [
            site_label(r.site),
            r.business_day.isoformat(),
            r.timezone,
            r.cutoff_hour,
            r.revision,
            r.entry_count,
            *(_money(name, getattr(r.totals, name)) for name in TOTAL_FIELDS),
            r.digest,
        ]
        for r in ordered
    )
    return encode_csv(header, rows)


_DIRECTIONS: dict[Direction, str] = {
    "hq_pays": "总部付门店 HQ pays",
    "site_remits": "门店上缴总部 site remits",
    "even": "持平 even",
}


def settlement_csv(settlement: Settlement) -> bytes:
    """The settlement list: one row per site, then HQ's row (the rows' nets sum to 0)."""
    header = [
        "站点 site",
        "起始营业日 first_day",
        "截止营业日 last_day",
        "天数 days",
        "净消费(元) consumption_yuan",
        "其中补贴(元) subsidy_used_yuan",
        "净收款(元) taken_in_yuan",
        "净额(元) net_yuan",
        "方向 direction",
    ]
    rows: list[list[str | int]] = [
        [
            line.site,
            line.first_day.isoformat(),
            line.last_day.isoformat(),
            line.days,
            format_yuan(line.consumption_fen),
            format_yuan(line.subsidy_used_fen),
            format_yuan(line.taken_in_fen),
            format_yuan(line.net_fen),
            _DIRECTIONS[line.direction],
        ]
        for line in settlement.lines
    ]
    hq = settlement.hq_net_fen
    rows.append(
        [
            HQ_LABEL,
            "",
            "",
            "",
            format_yuan(settlement.hq_desk_consumption_fen),
            "",
            format_yuan(settlement.hq_desk_taken_in_fen),
            format_yuan(hq),
            "总部净收 HQ receives" if hq > 0 else "总部净付 HQ pays" if hq < 0 else "持平 even",
        ]
    )
    return encode_csv(header, rows)
