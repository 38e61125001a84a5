"""Live pages over Server-Sent Events: a page that changes while HQ watches it (the
overview, a site) has a stream next to it that sends the page's live parts again, rendered
by the same partial templates the page includes, whenever what they show changed.

A stream polls a cheap *fingerprint* of its data (one small query) every ``TICK_S``; when
the fingerprint moved, or ``REFRESH_S`` passed (relative times like "12 s ago" age), it
renders the parts and sends those whose HTML differs from what it sent last. Each event is
``event: parts`` with JSON ``{element id: inner HTML}``; ``static/live.js`` puts each part
in place (the page names its stream in ``data-live`` on ``<main>``). Without JavaScript
the page is whole as served, and a reload shows the news.

A stream ends by itself after ``MAX_STREAM_S`` (the browser reconnects, and the reconnect
checks the session afresh: a disabled user or an ended session stops seeing updates), and
within a tick of the server stopping (uvicorn waits for open responses before it exits).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import StreamingResponse

from central.web.page import PageContext

TICK_S = 1.0
REFRESH_S = 15.0
MAX_STREAM_S = 300.0
#: How long the browser waits before reconnecting a dropped stream (ms).
RETRY_MS = 2000

Fingerprint = Callable[[sqlite3.Connection], object]
Render = Callable[[], Awaitable[dict[str, str]]]


@dataclass
class Live:
    """What the streams of one dashboard share (``app.state.live``)."""

    #: True once the server is stopping: every stream ends at its next tick.
    stopping: Callable[[], bool] = lambda: False
    tick_s: float = TICK_S
    refresh_s: float = REFRESH_S
    max_stream_s: float = MAX_STREAM_S
    #: Streams open now, and events sent since start.
    open_streams: int = 0
    stats: dict[str, int] = field(default_factory=dict)


def live_of(ctx: PageContext) -> Live:
    """The dashboard's :class:`Live` (a default one if the app has none)."""
    live = getattr(ctx.request.app.state, "live", None)
    return live if isinstance(live, Live) else Live()


def event(name: str, data: dict[str, Any]) -> str:
    """One SSE event: ``data`` as JSON on one line (JSON escapes every newline)."""
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def render_parts(ctx: PageContext, parts: dict[str, str], **values: Any) -> dict[str, str]:
    """Each element id of ``parts`` with its inner HTML: its template (a partial the page
    itself includes) rendered with ``values``."""
    return {
        part: bytes(ctx.render(template, **values).body).decode()
        for part, template in parts.items()
    }


def stream(ctx: PageContext, fingerprint: Fingerprint, render: Render) -> StreamingResponse:
    """The SSE response of a live page: ``render()`` gives its parts; they are sent first at
    once, then whenever ``fingerprint`` (run in a store operation) changes."""
    live = live_of(ctx)
    store = ctx.web.store

    async def events() -> AsyncIterator[str]:
        live.open_streams += 1
        started = last_render = time.monotonic()
        seen: object = None
        sent: dict[str, str] = {}
        try:
            yield f"retry: {RETRY_MS}\n\n"
            first = True
            while not live.stopping() and time.monotonic() - started < live.max_stream_s:
                mark = await store.run(fingerprint)
                now = time.monotonic()
                if first or mark != seen or now - last_render >= live.refresh_s:
                    first, seen, last_render = False, mark, now
                    parts = await render()
                    changed = {k: v for k, v in parts.items() if sent.get(k) != v}
                    if changed:
                        sent.update(changed)
                        live.stats["events"] = live.stats.get("events", 0) + 1
                        yield event("parts", changed)
                    else:
                        yield ": unchanged\n\n"  # also tells a dead client's socket apart
                await asyncio.sleep(live.tick_s)
        finally:
            live.open_streams -= 1

    headers = {**ctx.headers, "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)
