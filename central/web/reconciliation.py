"""Reconciliation: import a payment channel's statement (CSV/XLSX, as the API and CLI take
it), see each reference matched against onecard's recharges, and — with "apply" — carry out
what the statement proves (credit a 单边账 recharge once; void one never paid). Earlier runs
are listed. Finance and admin only; every run is stored and audited.
"""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from typing import Any

import msgspec
from starlette.datastructures import UploadFile
from starlette.responses import Response

from central import finance
from central.core.reconcile import StatementError
from central.web.page import PageContext

#: The largest statement a page upload takes (a month of a busy channel is well under).
MAX_STATEMENT_BYTES = 8 * 1024 * 1024
RECENT_RUNS = 20


def _recent(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    return [
        {
            "id": run_id,
            "at_ms": at_ms,
            "operator": operator,
            "filename": filename,
            "applied": bool(applied),
            "summary": msgspec.json.decode(summary),
        }
        for run_id, at_ms, operator, filename, applied, summary in conn.execute(
            "SELECT id, at_ms, operator, filename, applied, summary FROM reconciliations"
            " ORDER BY id DESC LIMIT ?",
            (RECENT_RUNS,),
        )
    ]


async def show(ctx: PageContext) -> Response:
    """GET /reconciliation: the upload form and the recent runs."""
    return await _page(ctx)


async def upload(ctx: PageContext) -> Response:
    """POST /reconciliation: match (and with ``apply``, act on) an uploaded statement."""
    upload = ctx.form.get("statement") if ctx.form is not None else None
    if not isinstance(upload, UploadFile) or not upload.filename:
        return await _page(ctx, refused=("no_file", ctx.t("recon.no_file")), status=400)
    try:
        data = await upload.read(MAX_STATEMENT_BYTES + 1)
    finally:
        await upload.close()
    if len(data) > MAX_STATEMENT_BYTES:
        return await _page(ctx, refused=("too_large", ctx.t("recon.too_large")), status=413)
    grace_text = ctx.form_value("grace_minutes", 6) or "30"
    if not grace_text.isdigit() or int(grace_text) > 7 * 24 * 60:
        return await _page(ctx, refused=("invalid_grace", ctx.t("recon.bad_grace")), status=400)
    apply = ctx.form_value("apply", 5) == "1"
    operator = ctx.user.username if ctx.user else ""
    filename = upload.filename[:200]

    def run(conn: sqlite3.Connection) -> finance.ReconciliationRun:
        return finance.reconcile_statement(
            conn,
            data,
            filename,
            operator=operator,
            source="hq:web",
            apply=apply,
            grace=timedelta(minutes=int(grace_text)),
            timezone=ctx.zone.key,
        )

    try:
        result = await ctx.web.store.run(run)
    except StatementError as exc:
        return await _page(ctx, refused=("invalid_statement", str(exc)), status=400)
    return await _page(ctx, result=result)


async def _page(
    ctx: PageContext,
    *,
    result: finance.ReconciliationRun | None = None,
    refused: tuple[str, str] | None = None,
    status: int = 200,
) -> Response:
    runs = await ctx.web.store.run(_recent)
    return ctx.render(
        "reconciliation.html",
        status=status,
        title=ctx.t("recon.title"),
        runs=runs,
        result=result,
        refused=refused,
        max_mb=MAX_STATEMENT_BYTES // (1024 * 1024),
    )
