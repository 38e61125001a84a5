"""The OpenAPI document of ``/api/v1``: it describes every route the server answers and no
other, is valid OpenAPI 3.1 with valid JSON Schemas, takes its bodies from the Structs the
API decodes, and is served (as JSON errors are) by the real server."""

from __future__ import annotations

import typing
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import httpx
import jsonschema_rs
import msgspec
import pytest
import schemathesis
from starlette.routing import BaseRoute, Mount, Route
from stores import central_db, open_store

from central import openapi, queries, users
from central.core.effects import ReasonCode, Rejected
from central.core.operations import AnyRequest
from central.web.app import Dashboard, dashboard_server

Routes = set[tuple[str, str]]


def routes_of(app: typing.Any, prefix: str = "") -> Routes:
    """Every (method, path) a Starlette app (and the apps it mounts) answers; HEAD aside."""
    found: Routes = set()
    children: Iterable[BaseRoute] = getattr(app, "routes", ())
    for route in children:
        if isinstance(route, Route):
            found |= {(m, prefix + route.path) for m in route.methods or () if m != "HEAD"}
        elif isinstance(route, Mount):
            found |= routes_of(route.app, prefix + route.path)
    fallback = getattr(getattr(app, "router", None), "default", None)
    if fallback is not None and getattr(fallback, "routes", None):  # central.api.in_front
        found |= routes_of(fallback, prefix)
    return found


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Dashboard, httpx.AsyncClient, str]]:
    """The dashboard as ``onecard-central serve --http`` composes it, in process, and a
    technician's token (the least the document asks)."""
    async with open_store(central_db(tmp_path)) as store:
        token = await store.run(lambda conn: queries.add_token(conn, "tech", "technician"))
        secret = await store.run(users.web_key)
        app = dashboard_server(store, "127.0.0.1", 0, secret_key=secret).config.app
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://hq") as http:
            yield app, http, token


async def test_every_api_route_is_documented_and_nothing_else(served):
    app, _, _ = served
    answered = {(m, p) for m, p in routes_of(app.api) if p.startswith("/api/")}
    documented = set(openapi.endpoints())
    assert answered - documented == set(), "routes the OpenAPI document does not describe"
    assert documented - answered == set(), "documented routes the server does not answer"
    # The dashboard sends /api/… to the API: a page there could never be reached.
    assert not [p for _, p in routes_of(app.web) if p == "/api" or p.startswith("/api/")]


def test_the_document_is_valid_openapi_3_1_with_valid_schemas():
    document = openapi.document()
    assert document["openapi"].startswith("3.1")
    schemathesis.openapi.from_dict(document).validate()  # the OpenAPI 3.1 meta-schema
    for schema in document["components"]["schemas"].values():
        # Each resolves its references inside the document, as a 2020-12 validator sees it.
        jsonschema_rs.Draft202012Validator({**schema, "components": document["components"]})
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            assert operation["security"] == [{"bearerToken": []}], (method, path)
            answers = set(operation["responses"])
            assert {"401", "403"} <= answers and {"200", "202"} & answers, (method, path)


def test_the_operation_body_is_every_request_the_api_decodes_minus_what_the_token_says():
    schemas = openapi.document()["components"]["schemas"]
    mapping = schemas["OperationRequest"]["discriminator"]["mapping"]
    tags = {t.__struct_config__.tag for t in AnyRequest.__args__}  # type: ignore[attr-defined]
    assert set(mapping) == tags
    recharge = schemas["Recharge"]
    assert {"op", "request_id", "card_uid", "amount_fen", "method"} <= set(recharge["required"])
    assert not {"operator", "source"} & set(recharge["required"])
    assert recharge["additionalProperties"] is False
    # The result bodies are the encoded Structs: an answer the API would send validates.
    refusal = jsonschema_rs.Draft202012Validator(
        {"$ref": "#/components/schemas/Rejected", "components": {"schemas": schemas}}
    )
    code = typing.get_args(ReasonCode)[0]
    answer = Rejected(request_id="r-1", reason_code=code, message="refused")
    refusal.validate(msgspec.json.decode(msgspec.json.encode(answer)))
    assert not refusal.is_valid({**msgspec.to_builtins(answer), "reason_code": "made_up"})


async def test_any_token_reads_the_document_and_no_one_without(served):
    _, http, token = served
    answer = await http.get("/api/v1/openapi.json", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    assert answer.json() == openapi.document()
    anonymous = await http.get("/api/v1/openapi.json")
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "unauthenticated"


async def test_an_unknown_path_or_method_gets_the_api_error_shape(served):
    _, http, token = served
    auth = {"Authorization": f"Bearer {token}"}
    missing = await http.get("/api/v1/nothing-here", headers=auth)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    wrong = await http.delete("/api/v1/settings", headers=auth)
    assert wrong.status_code == 405
    assert wrong.json()["error"]["code"] == "method_not_allowed"
    assert wrong.headers["allow"] == "GET, HEAD, PUT"
