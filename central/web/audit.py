"""The audit log: who did what to which target, from where, newest first; filtered by
operator, action, target and outcome, a page at a time (``before`` = the last id seen)."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from central import queries
from central.core.amounts import format_yuan
from central.web.page import PageContext

FILTERS = ("operator", "action", "target", "outcome")
_OUTCOMES = frozenset({"accepted", "rejected"})


async def show(ctx: PageContext) -> Response:
    """GET /audit?operator=…&action=…&target=…&outcome=…&before=ID"""
    params = ctx.request.query_params
    chosen = {name: params.get(name, "").strip()[:200] for name in FILTERS}
    if chosen["outcome"] not in _OUTCOMES:
        chosen["outcome"] = ""
    before = params.get("before", "")
    before_id = int(before) if before.isdigit() and len(before) < 19 else None
    size = ctx.web.config.page_size
    rows = await ctx.web.store.run(
        lambda conn: queries.audit_log(
            conn,
            operator=chosen["operator"] or None,
            action=chosen["action"] or None,
            target=chosen["target"] or None,
            outcome=chosen["outcome"] or None,
            before_id=before_id,
            limit=size + 1,
        )
    )
    more = len(rows) > size
    rows = rows[:size]
    return ctx.render(
        "audit.html",
        title=ctx.t("audit.title"),
        rows=[{**row, "changes": changes(row["before"], row["after"])} for row in rows],
        chosen=chosen,
        filtered=any(chosen.values()),
        older=ctx.url("/audit", **chosen, before=rows[-1]["id"]) if more else None,
        newest=ctx.url("/audit", **chosen) if before_id is not None else None,
    )


def changes(before: dict[str, Any], after: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(field, before, after) for every field either side names, amounts in yuan."""
    return [
        (key, _show(key, before.get(key)), _show(key, after.get(key)))
        for key in dict.fromkeys([*before, *after])
    ]


def _show(key: str, value: Any) -> str:
    if value is None:
        return ""
    if key.endswith("_fen") and isinstance(value, int) and not isinstance(value, bool):
        return f"¥{format_yuan(value)}"
    if isinstance(value, bool):
        return "✓" if value else "✗"
    return str(value)
