"""Write the seed corpus of every harness into ``fuzz/corpus/<name>/`` (small, valid inputs).

Seeds give the fuzzer a start past the first checks of each decoder: the golden frame
vectors of ``docs/terminal-protocol.md``, one valid payload of every MQTT message, and
member files and statements as HQ receives them. Run it after adding a decoder or a
message: ``.venv/bin/python fuzz/seed_corpus.py``. It only (re)writes files named
``seed-*``; reproducers saved from a fuzzing run (``crash-*``, ``regress-*``) stay.
"""

from __future__ import annotations

import io
import re
import sys
from datetime import UTC, datetime
from pathlib import Path

import fuzz_imports
import fuzz_messages
from fuzz_common import CORPUS

from protocol import messages as m
from protocol.framing import FrameDecoder

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "terminal-protocol.md"
AT = datetime(2026, 11, 23, 4, 5, 6, tzinfo=UTC)
SITE, UID = "SZ-FUTIAN", "04A1B2C3D4E5F6"


def golden_vectors() -> dict[str, bytes]:
    """``Vector: NAME`` + hex block pairs of the protocol document."""
    text = DOC.read_text(encoding="utf-8")
    found = re.findall(r"^Vector: ([A-Z0-9_]+)\n```hex\n(.*?)\n```", text, re.M | re.S)
    return {name: bytes.fromhex("".join(block.split())) for name, block in found}


def frame_seeds(vectors: dict[str, bytes]) -> dict[str, bytes]:
    """Each golden vector read whole; all of them in one stream read 7 bytes at a time."""
    seeds = {f"seed-{name}": b"\x00" + data for name, data in vectors.items()}
    seeds["seed-all-in-7-byte-reads"] = b"\x07" + b"".join(vectors.values())
    return seeds


def _record_fields(seq: int) -> dict[str, object]:
    return {
        "id": f"{SITE}.1.0.{seq}",
        "seq": seq,
        "site": SITE,
        "terminal": "POS-01",
        "term_rec": seq,
        "at": AT,
        "received_at": AT,
        "offline": False,
        "card_uid": UID,
    }


def mqtt_payloads() -> dict[str, list[m.Message]]:
    """One or two valid messages per MQTT decoder of the messages harness."""
    purchase = m.Purchase(
        **_record_fields(1),  # type: ignore[arg-type]
        approved=True,
        reason="ok",
        amount=1500,
        subsidy_fen=1000,
        cash_fen=500,
        items=[m.LineItem(sku="NOODLES", qty=1, unit_fen=1500)],
        blacklist_version=3,
    )
    door = m.DoorAccess(
        **{**_record_fields(2), "terminal": "DOOR-01"},  # type: ignore[arg-type]
        door="D1",
        direction="in",
        granted=True,
        reason="ok",
        blacklist_version=3,
    )
    intent = m.CardIntent(
        **_record_fields(2),  # type: ignore[arg-type]
        action="reissue",
        new_card_uid="04B0B0B0B0B0B0",
        operator="desk-1",
        reason="worn out",
    )
    batch = m.RecordBatch(site=SITE, epoch=1, first_seq=1, last_seq=2, records=[purchase, door])
    blacklist = m.BlacklistDelta(
        version=4,
        prev_version=3,
        at=AT,
        changes=[m.BlacklistChange(op="add", card_uid=UID, reason="lost", effective_at=AT)],
    )
    return {
        "mqtt.up.records": [batch],
        "mqtt.up.records.raw": [batch],
        "mqtt.record": [purchase, intent],
        "mqtt.up.state": [
            m.SiteBirth(
                at=AT,
                version="0.1.0",
                epoch=1,
                acked=[10, 20],
                outbox_depth=2,
                outbox_oldest_age_s=1.5,
                feed_version=7,
                blacklist_version=3,
                terminals=[m.TerminalStatus(id="POS-01", kind="pos", online=True, last_seen=AT)],
            ),
            m.SiteDeath(),
        ],
        "mqtt.up.health": [
            m.Health(
                site=SITE,
                at=AT,
                terminals=[m.TerminalHealth(id="POS-01", kind="pos", online=True, rtt_ms=2.5)],
                outbox_depth=1,
                feed_version=7,
            )
        ],
        "mqtt.up.logs": [
            m.LogBatch(
                site=SITE,
                stream="tail-1",
                batch=0,
                lines=[m.LogLine(at=AT, level="info", event="tap", fields={"rec": 1})],
                final=True,
                reason="ttl",
            )
        ],
        "mqtt.up.reply": [
            m.Reply(site=SITE, cmd_id="c1", at=AT, status="done", data={"step": "switched"})
        ],
        "mqtt.down.ack": [m.Ack(epoch=1, lane=1, acked_seq=42)],
        "mqtt.down.feed": [
            m.Feed(
                site=SITE,
                feed_version=8,
                prev_version=7,
                changes=[
                    m.FeedChange(op="upsert", entity="person", key="P1", data={"name": "王小明"}),
                    m.FeedChange(op="delete", entity="card", key=UID),
                ],
                blacklist=[blacklist],
            )
        ],
        "mqtt.down.cmd": [
            m.ResendFrom(id="c1", issued_at=AT, epoch=1, lane=0, from_seq=5),
            m.LogsTail(id="c2", issued_at=AT, stream="tail-1", match="tap", since_s=60),
            m.Upgrade(
                id="c3",
                issued_at=AT,
                expires_at=AT,
                rollout_id="r-1",
                version="0.2.0",
                manifest_url="https://hq.example/releases/0.2.0/manifest.json",
                manifest_sha256="0" * 64,
            ),
            m.DoorOpen(id="c4", issued_at=AT, terminal="DOOR-01", operator="admin-1"),
            m.SetTime(id="c5", issued_at=AT, now=AT),
        ],
        "mqtt.broadcast.blacklist": [blacklist],
        "mqtt.central.state": [m.CentralState(online=True, at=AT)],
    }


def message_seeds(vectors: dict[str, bytes]) -> dict[str, bytes]:
    """Terminal bodies from the golden vectors, then the MQTT payloads, then topics."""
    seeds: dict[str, bytes] = {}
    for name, data in vectors.items():
        for frame in FrameDecoder().feed(data):
            seeds[f"seed-terminal-{name}"] = bytes([frame.type]) + frame.payload
    for decoder, payloads in mqtt_payloads().items():
        for n, message in enumerate(payloads):
            index = fuzz_messages.SELECTORS[decoder]
            seeds[f"seed-{decoder}-{n}"] = bytes([index]) + m.encode(message)
    topic = fuzz_messages.SELECTORS["mqtt.topic"]
    for n, text in enumerate(
        (f"onecard/v1/site/{SITE}/up/records", "onecard/v1/broadcast/blacklist")
    ):
        seeds[f"seed-mqtt.topic-{n}"] = bytes([topic]) + text.encode()
    return seeds


STATEMENT_UTF8 = (
    "交易时间,商户订单号,金额(元),交易状态,支付渠道\r\n"
    "2026-11-23 12:00:01,BK20261123000123,¥200.00,成功,bank\r\n"
    "2026-11-23 12:05:09,BK20261123000124,1,234.50,失败,bank\r\n"
    '2026-11-23 12:06:00,"BK20261123000125","1,234.50",SUCCESS,wechat\r\n'
    "合计,,1434.50,,\r\n"
)
STATEMENT_WECHAT = (
    "微信支付账单明细\n起始时间：[2026-11-23 00:00:00]\n\n"
    "交易时间,交易单号,商户单号,订单金额(元),交易状态\n"
    "`2026-11-23 08:01:02,`4200001,`KIOSK-7-991,`50.00,支付成功\n"
)
MEMBERS_FORMULA = (
    "person_id,name,department,cash\r\n"
    'E1,=HYPERLINK("http://x"),Finance,1\r\n'
    "E2,+SUM(A1),@cmd,-2+3\r\n"
)


def member_xlsx() -> bytes:
    """A two-row member workbook with a title row above the header."""
    import openpyxl  # noqa: PLC0415 - only seeding needs it

    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None  # noqa: S101 - a new workbook has its sheet
    sheet.append(["会员名单 2026"])
    sheet.append(["人员编号", "姓名", "卡号", "余额", "补贴有效期"])
    sheet.append(["E1001", "张伟", "04A1B2C3", 128.5, datetime(2030, 12, 31)])  # noqa: DTZ001
    sheet.append(["E1002", "李娜", "04B2C3D4", 0, None])
    book.properties.created = book.properties.modified = datetime(2026, 1, 1)  # noqa: DTZ001
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def import_seeds() -> dict[str, bytes]:
    """Member files (UTF-8, GBK, UTF-16, XLSX, formulas) and two statements."""
    csv_, xlsx, statement = (
        fuzz_imports.INDEX[name] for name in ("members.csv", "members.xlsx", "statement")
    )
    samples = ROOT / "docs" / "samples"
    members = (samples / "members.csv").read_bytes()
    return {
        "seed-members-utf8": bytes([csv_]) + members,
        "seed-members-gbk": bytes([csv_]) + (samples / "members-gbk.csv").read_bytes(),
        "seed-members-utf16": bytes([csv_]) + members.decode().encode("utf-16"),
        "seed-members-bom-tabs": bytes([csv_]) + b"\xef\xbb\xbf" + members.replace(b",", b"\t"),
        "seed-members-formula": bytes([csv_]) + MEMBERS_FORMULA.encode(),
        "seed-members-xlsx": bytes([xlsx]) + member_xlsx(),
        "seed-statement-utf8": bytes([statement]) + STATEMENT_UTF8.encode(),
        "seed-statement-gbk": bytes([statement]) + STATEMENT_WECHAT.encode("gb18030"),
    }


def write(name: str, seeds: dict[str, bytes]) -> None:
    """Replace the ``seed-*`` files of harness ``name`` with ``seeds``."""
    folder = CORPUS / name
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("seed-*"):
        old.unlink()
    for file, data in seeds.items():
        (folder / file).write_bytes(data)
    sys.stdout.write(f"{folder.relative_to(ROOT)}: {len(seeds)} seeds\n")


def main() -> None:
    """Write every harness's seeds."""
    vectors = golden_vectors()
    write("frames", frame_seeds(vectors))
    write("messages", message_seeds(vectors))
    write("imports", import_seeds())


if __name__ == "__main__":
    main()
