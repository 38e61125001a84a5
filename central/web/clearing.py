"""Daily clearing: every site's (and HQ's) report of one business day — what was taken in,
what was served, the net position and who pays whom — its CSV for Excel, a bar chart of
each site's consumption over the 30 days up to that day (plain SVG drawn here: no
library, no script), and the settlement (通存通兑) over those 30 days.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from html import escape

from markupsafe import Markup
from starlette.responses import Response

from central import finance
from central.core.clearing import DayReport, Settlement, settle
from central.core.clearing_export import to_csv
from central.web.i18n import yuan
from central.web.page import PageContext

#: Days in the chart and the settlement.
WINDOW = 30


@dataclass(frozen=True, slots=True)
class Clearing:
    """What the page shows."""

    day: date
    reports: list[DayReport]
    #: (site id or None for HQ, [(day, consumption fen)], oldest first).
    series: list[tuple[str | None, list[tuple[date, int]]]]
    settlement: Settlement
    first: date
    #: Every report of the window (what the chart and the settlement are made of).
    window: list[DayReport]


def bar_chart(
    title: str,
    bars: Sequence[tuple[str, int]],
    *,
    value: Callable[[int], str] = str,
    width: int = 620,
    height: int = 150,
    every: int = 5,
) -> Markup:
    """A bar chart as inline SVG: one ``<rect>`` per (label, amount), a ``<title>`` on each
    bar (its label and ``value(amount)``), every ``every``-th label under the axis and the
    largest amount at the top. Every text is escaped."""
    top, bottom = 28, 20
    plot = height - top - bottom
    n = max(1, len(bars))
    step = width / n
    peak = max((amount for _, amount in bars), default=0)
    parts = [
        (
            f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img"'
            f' viewBox="0 0 {width} {height}" width="{width}" height="{height}"'
            f' aria-label="{escape(title)}">'
        ),
        f'<text x="0" y="14" class="chart-title">{escape(title)}</text>',
        (
            f'<text x="{width}" y="14" text-anchor="end" class="chart-peak">'
            f"{escape(value(peak))}</text>"
        ),
        f'<line x1="0" y1="{top + plot}" x2="{width}" y2="{top + plot}" class="chart-axis"/>',
    ]
    for i, (label, amount) in enumerate(bars):
        h = 0.0 if peak <= 0 else max(0.0, amount) / peak * plot
        x = i * step
        parts.append(
            f'<rect x="{x + 1:.1f}" y="{top + plot - h:.1f}" width="{max(1.0, step - 2):.1f}"'
            f' height="{h:.1f}" class="chart-bar"><title>{escape(label)}: '
            f"{escape(value(amount))}</title></rect>"
        )
        last = i == len(bars) - 1
        # Every ``every``-th label, but none crowding the last one.
        if i == 0 or last or (i % every == 0 and len(bars) - 1 - i >= every / 2):
            # The first label starts at the left edge, the last ends at the right one.
            anchor = "start" if i == 0 else "end" if last else "middle"
            at = 0 if i == 0 else width if last else x + step / 2
            parts.append(
                f'<text x="{at:.1f}" y="{height - 5}" text-anchor="{anchor}"'
                f' class="chart-label">{escape(label)}</text>'
            )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every text above is escaped


def _day_of(ctx: PageContext) -> date | None:
    """``?day=`` (None if malformed); today at HQ when absent."""
    raw = ctx.request.query_params.get("day", "").strip()
    if not raw:
        return datetime.fromtimestamp(ctx.now, ctx.zone).date()
    try:
        return date.fromisoformat(raw[:10]) if len(raw) == 10 else None
    except ValueError:
        return None


def clearing(conn: sqlite3.Connection, day: date, today: date | None = None) -> Clearing:
    """The day's reports, 30 days of them for the chart, and their settlement.

    The shown day, and every day from yesterday on (``today`` at HQ), is cleared now. Older
    days are read as stored (central's housekeeping re-clears stored days whose entries
    changed, every minute), and cleared (and so stored) only if never cleared before: a
    view costs a few lookups, not 30 days x sites of ledger scans. Days after tomorrow
    have happened nowhere yet and are not cleared (their bars are empty)."""
    today = today or day
    first = day - timedelta(days=WINDOW - 1)
    sites = finance.clearing_sites(conn)
    every: list[DayReport] = []
    for offset in range(WINDOW):
        d = first + timedelta(days=offset)
        if d > today + timedelta(days=1) and d != day:
            continue
        fresh = d == day or d >= today - timedelta(days=1)
        for site in sites:
            stored = None if fresh else finance.stored_report(conn, site, d)
            every.append(stored or finance.clear(conn, site, d))
    shown = [r for r in every if r.business_day == day]
    by_site: dict[str | None, dict[date, int]] = {site: {} for site in sites}
    for r in every:
        by_site.setdefault(r.site, {})[r.business_day] = r.totals.consumption_fen
    days = [first + timedelta(days=offset) for offset in range(WINDOW)]
    series = [(site, [(d, points.get(d, 0)) for d in days]) for site, points in by_site.items()]
    series.sort(key=lambda kv: (kv[0] is None, kv[0] or ""))
    # The same reports finance.settlement(conn, first, day) would clear, settled once.
    return Clearing(day, shown, series, settle(every), first, every)


async def show(ctx: PageContext) -> Response:
    """GET /clearing?day=YYYY-MM-DD"""
    day = _day_of(ctx)
    if day is None:
        return ctx.error(400, ctx.t("error.400.title"), ctx.t("clearing.bad_day"))
    today = datetime.fromtimestamp(ctx.now, ctx.zone).date()
    data = await ctx.web.store.run(lambda conn: clearing(conn, day, today))
    charts = [
        bar_chart(
            ctx.t("clearing.chart_title", site=site or "HQ"),
            [(d.strftime("%m-%d"), fen) for d, fen in points],
            value=yuan,
        )
        for site, points in data.series
    ]
    return ctx.render(
        "clearing.html",
        title=ctx.t("clearing.title"),
        data=data,
        charts=charts,
        day=day.isoformat(),
        previous=(day - timedelta(days=1)).isoformat(),
        following=(day + timedelta(days=1)).isoformat(),
        csv_url=ctx.url("/clearing.csv", day=day.isoformat()),
    )


async def csv(ctx: PageContext) -> Response:
    """GET /clearing.csv?day=YYYY-MM-DD: the day's reports for Excel."""
    day = _day_of(ctx)
    if day is None:
        return ctx.error(400, ctx.t("error.400.title"), ctx.t("clearing.bad_day"))
    reports = await ctx.web.store.run(lambda conn: finance.clear_all(conn, day))
    name = f"clearing-{day.isoformat()}.csv"
    headers = {**ctx.headers, "Content-Disposition": f'attachment; filename="{name}"'}
    return Response(to_csv(reports), media_type="text/csv; charset=utf-8", headers=headers)
