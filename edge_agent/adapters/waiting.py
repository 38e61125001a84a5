"""Waiting for an event with a time limit, without ever swallowing a cancellation.

``with suppress(TimeoutError): async with asyncio.timeout(t): await event.wait()`` looks
equivalent, but on Python 3.11 a cancellation that lands as the timeout fires can come out
as a TimeoutError — which the ``suppress`` then eats, and a task its TaskGroup is trying to
stop keeps running for ever. ``asyncio.wait`` raises nothing on timeout and lets a
cancellation through untouched.
"""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait up to ``seconds`` for ``event``; True if it is set."""
    if event.is_set():
        return True
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter}, timeout=seconds)
    finally:
        waiter.cancel()
    return event.is_set()


def raise_if_cancelling() -> None:
    """Re-raise a cancellation that was swallowed. On Python 3.11 ``asyncio.wait_for`` (which
    aiomqtt's ``publish`` uses) returns the result instead of raising when its future
    completes just as the task is cancelled — the PUBACK arriving while a TaskGroup shuts
    down — and a ``while True`` loop around it would run for ever. Call it at the top of
    every such loop."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
