"""Regenerate the test vectors of docs/terminal-protocol.md from the code in protocol/.

Run after any change to the frame or body encoding:

    .venv/bin/python scripts/protocol_vectors.py

It replaces what lies between the VECTORS markers of section 19 with vectors computed by
the real codec (deterministic keys, nonces and times), then tests/protocol/
test_golden_vectors.py checks the doc and the code agree byte for byte.
"""

# ruff: noqa
import hashlib, hmac, json, sys, textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import msgspec
from protocol import auth
from protocol.framing import FrameDecoder, FrameType, HEADER_SIZE, crc16, encode_frame
from protocol.terminal import *

KEY = bytes(range(32))
NT = bytes(range(0xA0, 0xB0))
NE = bytes(range(0xB0, 0xC0))
TID = "POS-01"
UID = "04A1B2C3D4E5F6"
T0 = 1795440000000
PAY = "BK20261123000123"
PAY2 = "BK20261123000124"
DISP = "充值成功 200.00元\n余额 287.50元"


def show(v, indent=0):
    pad = "  " * indent
    if isinstance(v, msgspec.Struct):
        # fields left UNSET are not on the wire at all
        v = {f: getattr(v, f) for f in v.__struct_fields__ if getattr(v, f) is not msgspec.UNSET}
    if isinstance(v, dict):
        if not v:
            return "{}"
        items = [f"{pad}  {json.dumps(k)}: {show(x, indent + 1)}" for k, x in v.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(v, list):
        if not v:
            return "[]"
        items = [f"{pad}  {show(x, indent + 1)}" for x in v]
        return "[\n" + ",\n".join(items) + f"\n{pad}]"
    if isinstance(v, bytes):
        return f"bin({v.hex()})"
    if v is None:
        return "nil"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    return str(v)


def hx(b):
    return " ".join(f"{x:02X}" for x in b)


def lines16(b):
    return [hx(b[i : i + 16]) for i in range(0, len(b), 16)]


def frame_hex(fb):
    return "\n".join([hx(fb[:HEADER_SIZE]), *lines16(fb[HEADER_SIZE:-2]), hx(fb[-2:])])


out = []


def p(s=""):
    out.append(s)


def para(s):
    out.append(textwrap.fill(s, width=92, break_long_words=False, break_on_hyphens=False))


def block(name, text):
    p(f"Vector: {name}")
    p("```hex")
    p(text)
    p("```")
    p()


FRAMES = {}


def vec(name, seq, body, note):
    fr = message_frame(body, seq)
    fb = encode_frame(fr)
    FRAMES[name] = fb
    p(f"#### {name}")
    p()
    para(note)
    p()
    p(
        f"`{FrameType(fr.type).name}` (0x{fr.type:02X}), seq {seq}, payload {len(fr.payload)} bytes, "
        f"CRC 0x{crc16(fb[1:-2]):04X}:"
    )
    p()
    p("```text")
    p(show(body))
    p("```")
    p()
    block(name, frame_hex(fb))
    return fb


TP = auth.terminal_proof(KEY, TID, NT, NE)
EP = auth.edge_proof(KEY, TID, NT, NE)
tin = b"onecard/v1 terminal proof\x00" + TID.encode() + b"\x00" + NT + NE
ein = b"onecard/v1 edge proof\x00" + TID.encode() + b"\x00" + NE + NT
assert hmac.new(KEY, tin, hashlib.sha256).digest() == TP
assert hmac.new(KEY, ein, hashlib.sha256).digest() == EP

p("### 19.1 CRC")
p()
para("The nine ASCII bytes `123456789` followed by their CRC-16/CCITT-FALSE, high byte first:")
p()
block("CRC_CHECK", hx(b"123456789" + crc16(b"123456789").to_bytes(2, "big")))
p("### 19.2 Authentication")
p()
para("The terminal key:")
p()
block("TERMINAL_KEY", "\n".join(lines16(KEY)))
para(
    f"The terminal proof input ({len(tin)} bytes: label, `00`, `POS-01`, `00`, `nonce_t`, `nonce_e`):"
)
p()
block("TERMINAL_PROOF_INPUT", "\n".join(lines16(tin)))
para(f"HMAC-SHA256(key, input) = `{TP.hex()}`, the `mac` of AUTH.")
p()
para(f"The edge proof input ({len(ein)} bytes: label, `00`, `POS-01`, `00`, `nonce_e`, `nonce_t`):")
p()
block("EDGE_PROOF_INPUT", "\n".join(lines16(ein)))
para(f"HMAC-SHA256(key, input) = `{EP.hex()}`, the `mac` of WELCOME.")
p()
para("The handshake of terminal `POS-01`, which has used record numbers up to 41:")
p()
vec(
    "HELLO",
    1,
    Hello(terminal_id=TID, kind="pos", firmware="acme-pos 2.4.1", nonce=NT, last_rec=41),
    "The terminal opens the session with its nonce `nonce_t`. `proto` is sent although it equals its default.",
)
vec(
    "CHALLENGE",
    1,
    Challenge(nonce=NE),
    "The edge's reply to HELLO (same seq) with its nonce `nonce_e`.",
)
vec("AUTH", 2, Auth(mac=TP), "The terminal proof.")
vec(
    "WELCOME",
    2,
    Welcome(mac=EP, time_ms=T0, site="SZ-FUTIAN"),
    "The edge proof, the time, the site, the default heartbeat interval and an empty configuration. "
    "Note `time_ms` as a uint 64 (`CF`) and the empty map `80`.",
)
p("### 19.3 Heartbeat")
p()
hb = vec(
    "HEARTBEAT",
    3,
    Heartbeat(time_ms=T0 + 10_000),
    "Ten seconds after WELCOME, nothing buffered, no faults.",
)
pl = hb[HEADER_SIZE:-2]
para("The same frame taken apart:")
p()
p("| bytes | meaning |")
p("|---|---|")
p(f"| `{hx(hb[0:1])}` | STX |")
p(f"| `{hx(hb[1:2])}` | version 1 |")
p(f"| `{hx(hb[2:3])}` | type 0x05 HEARTBEAT |")
p(f"| `{hx(hb[3:5])}` | seq 3 |")
p(f"| `{hx(hb[5:7])}` | length {len(pl)} |")
p(f"| `{hx(pl[0:1])}` | fixmap of 3 entries |")
p(f"| `{hx(pl[1:9])}` | fixstr of 7: `time_ms` |")
p(f"| `{hx(pl[9:18])}` | uint 64: {T0 + 10_000} |")
p(f"| `{hx(pl[18:27])}` | fixstr of 8: `buffered` |")
p(f"| `{hx(pl[27:28])}` | positive fixint 0 |")
p(f"| `{hx(pl[28:34])}` | fixstr of 5: `flags` |")
p(f"| `{hx(pl[34:35])}` | fixarray of 0 entries |")
p(
    f"| `{hx(hb[-2:])}` | CRC-16/CCITT-FALSE of `{hx(hb[1:3])} … {hx(pl[-1:])}` = 0x{crc16(hb[1:-2]):04X} |"
)
assert len(pl) == 35
p()
vec("HEARTBEAT_ACK", 3, HeartbeatAck(time_ms=T0 + 10_004), "The edge's reply with its clock.")
p("### 19.4 A sale at a POS terminal")
p()
tap = vec(
    "TAP",
    4,
    Tap(rec=42, uid=UID, time_ms=T0 + 12_345, amount=1250),
    "Keyed mode: the cashier keys ¥12.50 and the card is presented. The unused fields go out as nil.",
)
vec(
    "DECISION",
    4,
    Decision(
        rec=42, ok=True, code="ok", display="消费 12.50元\n余额 87.50元", amount=1250, balance=8750
    ),
    "Approved: ¥12.50 charged, ¥87.50 left. `display` is 31 bytes of UTF-8 with a line feed (a fixstr, `BF`).",
)
vec(
    "TAP_MENU",
    5,
    Tap(
        rec=43,
        uid=UID,
        time_ms=T0 + 30_000,
        items=[LineItem(sku="A01", qty=2), LineItem(sku="D07", qty=1)],
    ),
    "Menu mode: two of item `A01` and one of `D07`; the edge prices them.",
)
vec(
    "DECISION_DECLINED",
    5,
    Decision(
        rec=43, ok=False, code="insufficient_funds", display="余额不足\n余额 3.20元", balance=320
    ),
    "Declined: nothing is charged, so `amount` is nil.",
)
p("### 19.5 An event")
p()
vec(
    "EVENT",
    6,
    Event(rec=44, time_ms=T0 + 60_000, event="low_paper"),
    "The POS printer runs low on paper.",
)
vec("ACK", 6, Ack(), "The edge's acknowledgement: all defaults (`ok` true, `upto` and `code` nil).")
p("### 19.6 Requests from the edge")
p()
para("The edge numbers its own requests per link. Its first two requests on the link to `POS-01`:")
p()
vec("TIME", 1, Time(time_ms=T0 + 3_600_000), "Set the clock.")
vec(
    "CONFIG",
    2,
    Config(config={"pos_mode": "fixed", "price_fen": 1200}),
    "Switch the till to fixed-price mode at ¥12.00 a tap (see 10.15).",
)
para("Its first request on the link to a door controller, and the controller's NAK:")
p()
vec(
    "LIST_UPDATE",
    1,
    ListUpdate(
        kind="blacklist",
        version=1842,
        prev_version=1841,
        add=["04C0FFEE123456"],
        remove=["5A6B7C8D"],
    ),
    "A blacklist delta from version 1841 to 1842: one card added, one removed.",
)
vec(
    "ACK_VERSION_GAP",
    1,
    Ack(ok=False, code="version_gap"),
    "The controller's blacklist is not at version 1841: a NAK. The edge will send the full list.",
)
vec(
    "DOOR_OPEN",
    2,
    DoorOpen(door="D1", open_ms=5000),
    "HQ's remote open of door D1 for five seconds (see 10.17a); the controller answers ACK.",
)
p("### 19.7 Uploading buffered records")
p()
vec(
    "RECORD_UPLOAD",
    7,
    RecordUpload(
        records=[
            BufferedRecord(
                rec=100, time_ms=T0 + 90_000, what="tap", uid=UID, granted=True, door="D1"
            ),
            BufferedRecord(
                rec=101, time_ms=T0 + 95_000, what="event", door="D1", event="door_held"
            ),
        ]
    ),
    "A door controller that was cut off granted a card locally, then saw the door held open.",
)
vec(
    "ACK_UPTO",
    7,
    Ack(upto=101),
    "Both records are stored: the controller may delete records up to 101.",
)
p("### 19.7a Terminals that decide locally")
p()
para(
    "An attendance clock that decides every punch from its own lists says so in HELLO; the edge then "
    "pushes its lists and watches its record numbers for gaps (see 15 and 16.1)."
)
p()
vec(
    "HELLO_SMART",
    1,
    Hello(
        terminal_id="CLOCK-01",
        kind="attendance",
        firmware="acme-clock 3.1",
        nonce=NT,
        last_rec=230,
        lists=["blacklist", "whitelist"],
    ),
    "The clock keeps a blacklist and a whitelist; it has used record numbers up to 230.",
)
vec(
    "LIST_UPDATE_WHITELIST",
    2,
    ListUpdate(
        kind="whitelist",
        version=7,
        prev_version=6,
        add=["04A1B2C3D4E5F6"],
        door="D2",
    ),
    "A door controller's whitelist for its door D2 (each door's list has its own version chain): "
    "one card may now pass there.",
)
vec(
    "RECORD_REQUEST",
    3,
    RecordRequest(from_rec=102, to_rec=104),
    "The edge holds records 101 and 105 of this terminal but not 102 to 104: it asks for them.",
)
vec(
    "RECORD_REPLY",
    3,
    RecordReply(
        records=[
            BufferedRecord(
                rec=102, time_ms=T0 + 91_000, what="tap", uid=UID, granted=True, punch="in"
            ),
        ]
    ),
    "The terminal still holds record 102 and sends it; it does not hold 103 and 104 (say, numbers "
    "taken just before a power cut and never used), so the edge stops asking for them.",
)
p("### 19.8 A recharge")
p()
para("A kiosk recharges ¥200.00 paid by bank card, then a second attempt is declined by the bank.")
p()
vec(
    "RECHARGE_PREPARE",
    8,
    RechargePrepare(rec=7, uid=UID, amount=20000, method="bank", pay_ref=PAY, time_ms=T0 + 120_000),
    "Phase 1, before any money is taken.",
)
vec(
    "RECHARGE_RESULT_PREPARED",
    8,
    RechargeResult(rec=7, pay_ref=PAY, ok=True, code="ok", display="充值 200.00元\n请刷银行卡付款"),
    "Go ahead and take the money. The balance is not given yet.",
)
vec(
    "RECHARGE_COMMIT",
    9,
    RechargeCommit(rec=8, pay_ref=PAY, time_ms=T0 + 150_000),
    "Phase 2: the bank took the money. A new `rec`, the same `pay_ref`.",
)
vec(
    "RECHARGE_RESULT",
    9,
    RechargeResult(rec=8, pay_ref=PAY, ok=True, code="ok", display=DISP, balance=28750),
    f"Credited. `display` is {len(DISP.encode())} bytes of UTF-8, too long for a fixstr: a str 8, `D9 {len(DISP.encode()):02X}`.",
)
vec(
    "RECHARGE_ABORT",
    11,
    RechargeAbort(rec=10, pay_ref=PAY2, reason="bank_declined", time_ms=T0 + 180_000),
    "A second recharge was prepared under another `pay_ref` (seq 10, `rec` 9, not shown), but the bank declined the card: no money was taken.",
)
vec(
    "RECHARGE_RESULT_ABORTED",
    11,
    RechargeResult(rec=10, pay_ref=PAY2, ok=True, code="ok", display="充值已取消"),
    "The abort is accepted.",
)
p("### 19.9 Errors")
p()
vec(
    "ERROR",
    1,
    Error(code="unauthenticated", message="send HELLO first"),
    "A terminal sent a request with seq 1 before authenticating; the edge answers and closes the link.",
)
vec(
    "ERROR_AUTH_FAILED",
    2,
    Error(code="auth_failed", message="terminal proof does not match"),
    "The AUTH with seq 2 carried a wrong proof; the edge answers and closes the link.",
)
p("### 19.10 Bytes a receiver must drop")
p()
i = tap.index(bytes.fromhex("CD04E2")) + 2
bad = bytearray(tap)
bad[i] ^= 0x01
bad = bytes(bad)
d = FrameDecoder()
assert d.feed(bad) == [] and d.stats.crc_errors == 1 and d.buffered == 0, d.stats
p("#### CORRUPT_TAP")
p()
para(
    f"The TAP of 19.4 with one bit flipped in transit: payload byte {i - HEADER_SIZE} (`E2` → `E3`), "
    "which would turn ¥12.50 into ¥12.51. The received CRC `4D 6D` does not match the CRC of "
    f"what arrived (0x{crc16(bad[1:-2]):04X}), so the receiver drops the frame without a reply and the terminal "
    "retransmits it after 1 s."
)
p()
block("CORRUPT_TAP", frame_hex(bad))
noise = bytes.fromhex("FF 02 00 13 37")
d = FrameDecoder()
frames = d.feed(noise + FRAMES["HEARTBEAT_ACK"])
assert len(frames) == 1 and d.stats.bytes_skipped == len(noise), d.stats
p("#### NOISE_THEN_HEARTBEAT_ACK")
p()
para(
    "Five bytes of line noise (`FF 02 00 13 37`), then the HEARTBEAT_ACK of 19.3. The receiver skips `FF`, "
    "tries the `02` (its version byte `00` is not 1, so it drops it), skips the next three bytes, and finds the "
    "HEARTBEAT_ACK."
)
p()
block("NOISE_THEN_HEARTBEAT_ACK", "\n".join([hx(noise), frame_hex(FRAMES["HEARTBEAT_ACK"])]))

DOC = ROOT / "docs" / "terminal-protocol.md"
START = "<!-- VECTORS: generated by scripts/protocol_vectors.py from protocol/; do not edit by hand -->\n"
END = "<!-- /VECTORS -->\n"
text = DOC.read_text(encoding="utf-8")
head, rest = text.split(START, 1)
_, tail = rest.split(END, 1)
DOC.write_text(head + START + "\n".join(out).rstrip() + "\n" + END + tail, encoding="utf-8")
