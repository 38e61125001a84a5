"""The virtual card's APDU logic, without I/O: what each command answers, byte for byte."""

from __future__ import annotations

import functools
import operator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_sim.vcard import (
    ATS,
    DATA_EF_SIZE,
    ONECARD_AID,
    SW_CLA_NOT_SUPPORTED,
    SW_END_OF_DATA,
    SW_FILE_NOT_FOUND,
    SW_FUNCTION_NOT_SUPPORTED,
    SW_INS_NOT_SUPPORTED,
    SW_LC_INCONSISTENT,
    SW_NO_CURRENT_EF,
    SW_NO_PRECISE_DIAGNOSIS,
    SW_NOT_ENOUGH_MEMORY,
    SW_OFFSET_OUTSIDE_EF,
    SW_OK,
    SW_WRONG_LENGTH,
    SW_WRONG_P1P2,
    CardApplet,
    CommandApdu,
    parse_command_apdu,
    parse_uid,
)

UID7 = bytes.fromhex("04A1B2C3D4E5F6")
DATA = bytes(range(DATA_EF_SIZE))
SELECT_APP = bytes.fromhex("00A40400") + bytes([len(ONECARD_AID)]) + ONECARD_AID
SELECT_EF = bytes.fromhex("00A4020C020101")


def apdu(hex_string: str) -> bytes:
    return bytes.fromhex(hex_string.replace(" ", ""))


@pytest.fixture
def card() -> CardApplet:
    return CardApplet(UID7, data=DATA)


@pytest.fixture
def selected(card: CardApplet) -> CardApplet:
    assert card.process_apdu(SELECT_APP) == SW_OK
    return card


# --- parsing -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [
        ("00A40400", CommandApdu(0x00, 0xA4, 0x04, 0x00)),
        ("FFCA000000", CommandApdu(0xFF, 0xCA, 0, 0, ne=256, le_wildcard=True)),
        ("00B0000010", CommandApdu(0x00, 0xB0, 0, 0, ne=16)),
        ("00D6000002CAFE", CommandApdu(0x00, 0xD6, 0, 0, b"\xca\xfe")),
        ("00A4040002CAFE00", CommandApdu(0x00, 0xA4, 4, 0, b"\xca\xfe", 256, True)),
        ("00B0000000 0100", CommandApdu(0x00, 0xB0, 0, 0, ne=256)),
        ("00B0000000 0000", CommandApdu(0x00, 0xB0, 0, 0, ne=65536, le_wildcard=True)),
        ("00D6000000 0002 CAFE", CommandApdu(0x00, 0xD6, 0, 0, b"\xca\xfe")),
        ("00D6000000 0002 CAFE 0010", CommandApdu(0x00, 0xD6, 0, 0, b"\xca\xfe", ne=16)),
    ],
)
def test_parse_command_apdu_reads_cases_1_to_4_short_and_extended(
    raw: str, parsed: CommandApdu
) -> None:
    assert parse_command_apdu(apdu(raw)) == parsed


@pytest.mark.parametrize(
    "raw",
    ["", "00", "00A404", "00D6000003CAFE", "00D6000002CAFE0000", "000000000000", "00B0000000 01",
     "00D6000000 0000 AA", "00D6000000 0002 CAFE 00"],
)  # fmt: skip
def test_parse_command_apdu_rejects_lengths_that_do_not_add_up(raw: str) -> None:
    assert parse_command_apdu(apdu(raw)) is None


# --- identity: UID, ATR, ATS -------------------------------------------------------------


@pytest.mark.parametrize("uid_hex", ["04A1B2C3", "04A1B2C3D4E5F6", "04A1B2C3D4E5F6A7B8C9"])
def test_get_uid_with_le_00_returns_the_whole_uid(uid_hex: str) -> None:
    uid = bytes.fromhex(uid_hex)
    assert CardApplet(uid).process_apdu(apdu("FFCA000000")) == uid + SW_OK


@pytest.mark.parametrize("uid_hex", ["04A1B2C3", "04A1B2C3D4E5F6", "04A1B2C3D4E5F6A7B8C9"])
def test_get_uid_with_exact_le_returns_the_uid(uid_hex: str) -> None:
    uid = bytes.fromhex(uid_hex)
    assert CardApplet(uid).process_apdu(apdu("FFCA0000") + bytes([len(uid)])) == uid + SW_OK


def test_get_uid_with_short_le_answers_6c_and_the_uid_length(card: CardApplet) -> None:
    assert card.process_apdu(apdu("FFCA000004")) == apdu("6C07")


def test_get_uid_with_long_le_returns_the_uid_and_end_of_data(card: CardApplet) -> None:
    assert card.process_apdu(apdu("FFCA000010")) == UID7 + SW_END_OF_DATA


@pytest.mark.parametrize(
    ("command", "sw"),
    [
        ("FFCA0000", SW_WRONG_LENGTH),  # no Le
        ("FFCA00000100", SW_WRONG_LENGTH),  # a data field
        ("FFCA000100", SW_WRONG_P1P2),
        ("FFCA020000", SW_FUNCTION_NOT_SUPPORTED),
        ("FF82000006FFFFFFFFFFFF", SW_INS_NOT_SUPPORTED),  # MIFARE LOAD KEY: not this card
    ],
)
def test_get_data_refuses_what_pcsc_part_3_does_not_define(
    card: CardApplet, command: str, sw: bytes
) -> None:
    assert card.process_apdu(apdu(command)) == sw


def test_get_ats_returns_the_ats_whose_historical_bytes_are_in_the_atr(
    card: CardApplet,
) -> None:
    assert card.process_apdu(apdu("FFCA010000")) == ATS + SW_OK
    assert ATS[0] == len(ATS)
    assert card.atr[4:-1] == ATS[5:] == b"ONECARD"


def test_atr_is_the_pcsc_part_3_form_for_an_iso14443_4_card(card: CardApplet) -> None:
    atr = card.atr
    assert atr[:4] == apdu("3B878001")
    assert atr[1] & 0x0F == len(atr) - 5  # historical bytes
    assert functools.reduce(operator.xor, atr[1:]) == 0  # TCK


@pytest.mark.parametrize("uid", [b"", b"\x04\xa1\xb2", bytes(5), bytes(11)])
def test_a_uid_is_4_7_or_10_bytes(uid: bytes) -> None:
    with pytest.raises(ValueError, match="4, 7 or 10"):
        CardApplet(uid)


def test_parse_uid_accepts_colons_and_spaces_and_rejects_non_hex() -> None:
    assert parse_uid("04:A1:B2:C3") == parse_uid("04 a1 b2 c3") == apdu("04A1B2C3")
    with pytest.raises(ValueError, match="not hexadecimal"):
        parse_uid("04A1B2CZ")


def test_the_data_file_is_at_most_256_bytes() -> None:
    with pytest.raises(ValueError, match="256"):
        CardApplet(UID7, data=bytes(257))
    assert CardApplet(UID7, data=b"hi").data == b"hi" + bytes(254)


# --- SELECT ------------------------------------------------------------------------------


def test_select_onecard_aid_with_le_returns_its_fci(card: CardApplet) -> None:
    response = card.process_apdu(SELECT_APP + b"\x00")
    assert response[-2:] == SW_OK
    assert response[0] == 0x6F
    assert response[1] == len(response) - 4
    assert response[2:4] == bytes([0x84, len(ONECARD_AID)])
    assert response[4 : 4 + len(ONECARD_AID)] == ONECARD_AID
    assert card.app_selected


@pytest.mark.parametrize(
    "command",
    [SELECT_APP, apdu("00A4040C09") + ONECARD_AID, apdu("00A4040C09") + ONECARD_AID + b"\0"],
)
def test_select_onecard_aid_without_le_or_with_p2_0c_returns_no_data(
    card: CardApplet, command: bytes
) -> None:
    assert card.process_apdu(command) == SW_OK
    assert card.app_selected


def test_select_unknown_aid_is_file_not_found_and_keeps_the_selection(
    selected: CardApplet,
) -> None:
    assert selected.process_apdu(apdu("00A4040007A0000000041010")) == SW_FILE_NOT_FOUND
    assert selected.app_selected
    assert selected.process_apdu(apdu("00B0000004")) == DATA[:4] + SW_OK


@pytest.mark.parametrize(
    "command",
    [
        apdu("00A4040409") + ONECARD_AID,  # P2 04 (FCP) for an application
        apdu("00A4040209") + ONECARD_AID,  # next occurrence
        apdu("00A408000401010101"),  # select by path
        apdu("00A402080201 01"),
    ],
)
def test_select_with_unsupported_p1_p2_is_wrong_p1_p2(card: CardApplet, command: bytes) -> None:
    assert card.process_apdu(command) == SW_WRONG_P1P2


def test_select_data_ef_inside_the_application(selected: CardApplet) -> None:
    assert selected.process_apdu(SELECT_EF) == SW_OK


def test_select_data_ef_with_p2_00_and_le_returns_its_fcp(selected: CardApplet) -> None:
    response = selected.process_apdu(apdu("00A40200020101 00"))
    assert response[-2:] == SW_OK
    assert response[0] == 0x62
    assert apdu("80020100") in response  # size 256
    assert apdu("83020101") in response  # file id


def test_select_data_ef_outside_the_application_is_file_not_found(card: CardApplet) -> None:
    assert card.process_apdu(SELECT_EF) == SW_FILE_NOT_FOUND


def test_select_ef_needs_a_two_byte_file_id(selected: CardApplet) -> None:
    assert selected.process_apdu(apdu("00A4020C03010101")) == SW_LC_INCONSISTENT


def test_select_mf_deselects_the_application(selected: CardApplet) -> None:
    assert selected.process_apdu(apdu("00A4000C023F00")) == SW_OK
    assert not selected.app_selected
    assert selected.process_apdu(apdu("00B0000004")) == SW_NO_CURRENT_EF


# --- READ BINARY -------------------------------------------------------------------------


def test_read_binary_before_select_has_no_current_ef(card: CardApplet) -> None:
    assert card.process_apdu(apdu("00B0000010")) == SW_NO_CURRENT_EF


def test_read_binary_le_00_reads_the_whole_file(selected: CardApplet) -> None:
    assert selected.process_apdu(apdu("00B0000000")) == DATA + SW_OK


def test_read_binary_reads_le_bytes_at_the_p1_p2_offset(selected: CardApplet) -> None:
    assert selected.process_apdu(apdu("00B0001010")) == DATA[0x10:0x20] + SW_OK


def test_read_binary_past_the_end_with_explicit_le_warns_end_of_data(
    selected: CardApplet,
) -> None:
    assert selected.process_apdu(apdu("00B000F020")) == DATA[0xF0:] + SW_END_OF_DATA


def test_read_binary_le_00_near_the_end_reads_what_is_left(selected: CardApplet) -> None:
    assert selected.process_apdu(apdu("00B000F000")) == DATA[0xF0:] + SW_OK


def test_read_binary_with_extended_le(selected: CardApplet) -> None:
    assert selected.process_apdu(apdu("00B00000 000100")) == DATA + SW_OK


@pytest.mark.parametrize("offset", ["0100", "7FFF"])
def test_read_binary_offset_outside_the_file_is_6b00(selected: CardApplet, offset: str) -> None:
    assert selected.process_apdu(apdu(f"00B0{offset}01")) == SW_OFFSET_OUTSIDE_EF


def test_read_binary_by_sfi_selects_and_reads_the_data_ef(selected: CardApplet) -> None:
    assert selected.process_apdu(apdu("00B0811004")) == DATA[0x10:0x14] + SW_OK


@pytest.mark.parametrize(("p1", "sw"), [("82", SW_FILE_NOT_FOUND), ("A1", SW_WRONG_P1P2)])
def test_read_binary_by_unknown_or_malformed_sfi(selected: CardApplet, p1: str, sw: bytes) -> None:
    assert selected.process_apdu(apdu(f"00B0{p1}0004")) == sw


@pytest.mark.parametrize("command", ["00B00000", "00B0000001AA", "00B0000001AA00"])
def test_read_binary_needs_le_and_no_data(selected: CardApplet, command: str) -> None:
    assert selected.process_apdu(apdu(command)) == SW_WRONG_LENGTH


# --- UPDATE BINARY -----------------------------------------------------------------------


def test_update_binary_then_read_binary_round_trips(selected: CardApplet) -> None:
    assert selected.process_apdu(apdu("00D6002004CAFEBABE")) == SW_OK
    assert selected.process_apdu(apdu("00B0002004")) == apdu("CAFEBABE9000")
    assert selected.data == DATA[:0x20] + apdu("CAFEBABE") + DATA[0x24:]


def test_update_binary_by_sfi(selected: CardApplet) -> None:
    assert selected.process_apdu(apdu("00D6810002BEEF")) == SW_OK
    assert selected.data[:2] == apdu("BEEF")


def test_update_binary_before_select_has_no_current_ef(card: CardApplet) -> None:
    assert card.process_apdu(apdu("00D6000001FF")) == SW_NO_CURRENT_EF
    assert card.data == DATA


def test_update_binary_past_the_end_changes_nothing(selected: CardApplet) -> None:
    assert selected.process_apdu(apdu("00D600FF02FFFF")) == SW_NOT_ENOUGH_MEMORY
    assert selected.data == DATA


def test_update_binary_at_an_offset_outside_the_file_is_6b00(selected: CardApplet) -> None:
    assert selected.process_apdu(apdu("00D6010001FF")) == SW_OFFSET_OUTSIDE_EF


@pytest.mark.parametrize("command", ["00D60000", "00D6000004", "00D6000001FF00"])
def test_update_binary_needs_data_and_no_le(selected: CardApplet, command: str) -> None:
    assert selected.process_apdu(apdu(command)) == SW_WRONG_LENGTH


# --- power -------------------------------------------------------------------------------


def test_power_off_deselects_but_keeps_the_data(selected: CardApplet) -> None:
    assert selected.process_apdu(apdu("00D6000001AA")) == SW_OK
    selected.power_off()
    selected.power_on()
    assert selected.process_apdu(apdu("00B0000001")) == SW_NO_CURRENT_EF
    assert selected.data[0] == 0xAA


def test_reset_deselects_and_returns_the_atr(selected: CardApplet) -> None:
    assert selected.reset() == selected.atr
    assert not selected.app_selected


# --- malformed input ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "sw"),
    [
        ("", SW_WRONG_LENGTH),
        ("00A404", SW_WRONG_LENGTH),
        ("00A4040009F04F4E45", SW_WRONG_LENGTH),  # Lc says 9, 3 follow
        ("80CA000000", SW_CLA_NOT_SUPPORTED),
        ("0CB0000010", SW_CLA_NOT_SUPPORTED),  # secure messaging
        ("00C0000000", SW_INS_NOT_SUPPORTED),  # GET RESPONSE: nothing is ever pending
        ("00600000", SW_INS_NOT_SUPPORTED),
    ],
)
def test_malformed_or_unsupported_commands_get_their_status_word(
    card: CardApplet, command: str, sw: bytes
) -> None:
    assert card.process_apdu(apdu(command)) == sw


def _is_status_word(sw: bytes) -> bool:
    sw1, sw2 = sw
    return (sw1, sw2) == (0x90, 0x00) or 0x61 <= sw1 <= 0x6F


def _assert_well_formed(response: bytes) -> None:
    assert len(response) >= 2
    assert _is_status_word(response[-2:])
    assert response[-2:] != SW_NO_PRECISE_DIAGNOSIS  # reserved for the transport's safety net


@given(st.binary(max_size=300))
def test_any_bytes_get_a_response_ending_in_a_status_word(raw: bytes) -> None:
    _assert_well_formed(CardApplet(UID7).process_apdu(raw))


_commands = st.builds(
    lambda header, body: header + body,
    st.tuples(
        st.sampled_from([0x00, 0xFF, 0x80]),
        st.sampled_from([0xA4, 0xB0, 0xD6, 0xCA, 0xC0]),
        st.sampled_from([0x00, 0x01, 0x02, 0x04, 0x81, 0xFF]) | st.integers(0, 255),
        st.sampled_from([0x00, 0x0C, 0xF0, 0xFF]) | st.integers(0, 255),
    ).map(bytes),
    st.one_of(
        st.just(b""),
        st.binary(min_size=1, max_size=1),
        st.binary(max_size=20).map(lambda data: bytes([len(data)]) + data),
        st.binary(max_size=20).map(lambda data: bytes([len(data)]) + data + b"\x00"),
        st.just(b"\x09" + ONECARD_AID),
        st.just(b"\x02\x01\x01"),
        st.binary(min_size=2, max_size=300),
    ),
)


@given(st.lists(_commands, max_size=12))
def test_any_command_sequence_gets_well_formed_answers_and_keeps_the_ef_size(
    commands: list[bytes],
) -> None:
    card = CardApplet(UID7)
    for command in commands:
        _assert_well_formed(card.process_apdu(command))
        assert len(card.data) == DATA_EF_SIZE
