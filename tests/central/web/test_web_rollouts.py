"""The Upgrades pages and API over real HTTP: a rollout's stages, sites and log; pause,
resume, retry and abort by the roles that may (audited), read-only for auditors, refused
with the state machine's reason when an action does not apply."""

from __future__ import annotations

import re
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from web_harness import sign_in

from central import queries
from central.artifacts import ReleaseStore
from central.core.release import public_key_of
from central.rollouts import create

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_central_artifacts import signed_release

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture
async def rollout(dash, tmp_path: Path):
    key = Ed25519PrivateKey.generate()
    releases = ReleaseStore(tmp_path / "releases")
    release = signed_release(tmp_path / "r", key)
    releases.publish(release, [public_key_of(key)], now=datetime.now(UTC))

    def start(conn) -> None:
        create(
            conn,
            rollout_id="r-0.2.0",
            version="0.2.0",
            releases=releases,
            base_url="https://hq.example:8443",
            sites=None,
            stages="1,rest",
            canary=("SZ-FUTIAN",),
            operator="hq-tech",
            timeout_s=1800,
            at=datetime.now(UTC),
        )

    await dash.store.run(start)
    return dash


async def token(dash, role: str) -> dict[str, str]:
    secret = await dash.store.run(lambda c: queries.add_token(c, f"{role}-bot", role))
    return {"Authorization": f"Bearer {secret}"}


async def test_the_api_lists_shows_and_controls_a_rollout(rollout):
    http = rollout.client()
    tech, auditor = await token(rollout, "technician"), await token(rollout, "auditor")
    listed = (await http.get("/api/v1/rollouts", headers=auditor)).json()
    assert [(r["id"], r["status"], r["sites"]) for r in listed] == [("r-0.2.0", "running", 2)]
    one = (await http.get("/api/v1/rollouts/r-0.2.0", headers=auditor)).json()
    assert [s["sites"] for s in one["stages"]] == [["SZ-FUTIAN"], ["BJ-CHAOYANG"]]
    assert one["log"]
    refused = await http.post("/api/v1/rollouts/r-0.2.0/pause", headers=auditor, json={})
    assert refused.status_code == 403
    paused = await http.post("/api/v1/rollouts/r-0.2.0/pause", headers=tech, json={"note": "x"})
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    resumed = await http.post("/api/v1/rollouts/r-0.2.0/resume", headers=tech)
    assert resumed.json()["status"] == "running"
    nothing_to_retry = await http.post("/api/v1/rollouts/r-0.2.0/retry", headers=tech, json={})
    assert nothing_to_retry.status_code == 409
    assert (await http.post("/api/v1/rollouts/r-0.2.0/explode", headers=tech)).status_code == 404
    assert (await http.get("/api/v1/rollouts/r-9", headers=tech)).status_code == 404
    bad = await http.post("/api/v1/rollouts/r-0.2.0/pause", headers=tech, json={"x": 1})
    assert bad.status_code == 400
    aborted = await http.post("/api/v1/rollouts/r-0.2.0/abort", headers=tech, json={"note": "no"})
    assert aborted.json()["status"] == "aborted"
    again = await http.post("/api/v1/rollouts/r-0.2.0/resume", headers=tech)
    assert again.status_code == 409
    audit = await rollout.audit(target="rollout:r-0.2.0")
    assert [a["action"] for a in audit] == ["rollout.abort", "rollout.resume", "rollout.pause"]
    assert all(a["operator"] == "technician-bot" for a in audit)


async def test_the_pages_show_the_rollout_and_pause_it_for_a_technician(rollout):
    tech = rollout.client(**{"Accept-Language": "en"})
    assert (await sign_in(tech, "technician-1")).status_code == 303
    listing = await tech.get("/rollouts")
    assert listing.status_code == 200 and 'data-rollout="r-0.2.0"' in listing.text
    page = await tech.get("/rollouts/r-0.2.0")
    assert 'data-site="SZ-FUTIAN"' in page.text and 'id="pause"' in page.text
    token = _CSRF.search(page.text)[1]  # type: ignore[index]
    unconfirmed = await tech.post("/rollouts/r-0.2.0/pause", data={"csrf": token})
    assert unconfirmed.status_code == 400
    paused = await tech.post(
        "/rollouts/r-0.2.0/pause", data={"csrf": token, "confirm": "yes", "note": "canary slow"}
    )
    assert "The rollout is paused." in paused.text and 'id="resume"' in paused.text
    auditor = rollout.client(**{"Accept-Language": "en"})
    assert (await sign_in(auditor, "auditor-1")).status_code == 303
    seen = await auditor.get("/rollouts/r-0.2.0")
    assert seen.status_code == 200 and 'id="resume"' not in seen.text  # read only
    operator = rollout.client(**{"Accept-Language": "en"})
    assert (await sign_in(operator, "operator-1")).status_code == 303
    assert (await operator.get("/rollouts")).status_code == 403  # money people: no upgrades
