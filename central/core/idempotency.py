"""Idempotency by client-supplied request id.

The caller stores every result — accepted *and* rejected — under its request id together
with the digest of the request that produced it. A retry of the same request gets the very
same result (and, since the effects were applied once, changes nothing); the same id with
different content is refused ``request_id_reused`` rather than guessed at. A new attempt
after a refusal (say, after a recharge fixed ``insufficient_balance``) needs a new id.
"""

from __future__ import annotations

import hashlib

import msgspec
from msgspec import Struct

from central.core.effects import Accepted, Rejected
from central.core.request import Request

Result = Accepted | Rejected
_encoder = msgspec.json.Encoder(order="sorted")


class StoredResult(Struct, frozen=True, kw_only=True):
    """A result as the caller keeps it, keyed by ``request_id``."""

    request_id: str
    digest: str
    result: Accepted | Rejected


def request_digest(request: Request) -> str:
    """SHA-256 of the request's canonical JSON (fields sorted), tag included."""
    return hashlib.sha256(_encoder.encode(request)).hexdigest()


def remember(request: Request, result: Result) -> StoredResult:
    """What to store for ``request`` once ``result`` is applied."""
    return StoredResult(
        request_id=request.request_id, digest=request_digest(request), result=result
    )


def replay(request: Request, stored: StoredResult | None) -> Result | None:
    """The answer to ``request`` given what is stored under its id: None when nothing is
    (decide it now); the stored result when the request is the same; ``request_id_reused``
    when the id was used for something else. A replayed result must not be applied again."""
    if stored is None:
        return None
    if stored.request_id != request.request_id:
        raise ValueError("the stored result belongs to another request id")
    if stored.digest == request_digest(request):
        return stored.result
    return Rejected(
        request_id=request.request_id,
        reason_code="request_id_reused",
        message=f"request id {request.request_id} was already used for a different request",
    )
