"""Wire formats: the published test vectors, round trips, and fuzzing that only ever raises CodecError."""

from __future__ import annotations

import re
import string

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pulsestack.wire import nbiot, sigfox
from pulsestack.wire.codecs import CODECS, codec_of
from pulsestack.wire.errors import CodecError
from pulsestack.wire.protocol import StoredRaw
from pulsestack.wire.reading import Flags, Reading, decode_raw, encode_raw

KEY = bytes(range(32))
VECTOR = bytes.fromhex(
    "0102000144a21cd245a10000002a69224e800384040001e2400e10000c000000070028e67509dc437aaab8"
)


def test_nbiot_vector_encodes_byte_for_byte() -> None:
    frame = nbiot.encode(
        KEY, device=356938035643809, seq=42, period_end=1763856000, bucket_seconds=900,
        counts=[12, 0, 7, 40], index=123456, battery_mv=3600, flags=0x02,
    )
    assert frame == VECTOR
    assert len(frame) == 43


def test_nbiot_vector_decodes_with_bucket_starts() -> None:
    frame = nbiot.parse(VECTOR)
    assert nbiot.verify(frame, KEY)
    reading = nbiot.to_reading(frame, 0.0, "t", VECTOR)
    assert (reading.device, reading.seq, reading.index, reading.battery_mv) == ("356938035643809", 42, 123456, 3600)
    assert reading.counts == [12, 0, 7, 40]
    assert reading.flags == Flags.BATTERY_LOW
    starts = [reading.first_bucket_start + i * 900 for i in range(4)]
    assert starts == [1763852400, 1763853300, 1763854200, 1763855100]


def test_nbiot_ack_vector() -> None:
    ack = nbiot.encode_ack(KEY, 42, nbiot.ACK_STORED)
    assert ack.hex() == "01800000002a003fad796527a4421b"
    assert nbiot.decode_ack(KEY, ack) == (42, 0)
    with pytest.raises(CodecError):
        nbiot.decode_ack(bytes(32), ack)


def test_sigfox_payload_vector() -> None:
    payload = sigfox.encode_payload(index=123456, counts=[12, 0, 7, 4095], battery_mv=3600, flags=0x1)
    assert payload.hex() == "110001e24000c000007fffa0"
    assert sigfox.decode_payload(payload) == (Flags.BATTERY_LOW, 123456, [12, 0, 7, 4095], 3600)


def test_tampered_frame_fails_verification() -> None:
    tampered = bytearray(VECTOR)
    tampered[30] ^= 0x01
    assert not nbiot.verify(nbiot.parse(bytes(tampered)), KEY)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (VECTOR[:-1], "malformed"),
        (VECTOR + b"\x00", "malformed"),
        (b"\x02" + VECTOR[1:], "malformed"),
        (VECTOR[:20] + b"\x00" + VECTOR[21:], "malformed"),  # n = 0
        (VECTOR[:18] + (901).to_bytes(2, "big") + VECTOR[20:], "misaligned"),
        (VECTOR[:14] + (1763856060).to_bytes(4, "big") + VECTOR[18:], "misaligned"),
    ],
)
def test_nbiot_structural_errors(data: bytes, reason: str) -> None:
    with pytest.raises(CodecError) as err:
        nbiot.parse(data)
    assert err.value.reason == reason


counts_st = st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=240)


@given(
    device=st.integers(0, 2**64 - 1), seq=st.integers(0, 2**32 - 1), k=st.integers(0, 2**32 // 3600 - 1),
    width=st.sampled_from([60, 300, 600, 900, 1800, 3600]), counts=counts_st,
    index=st.integers(0, 2**32 - 1), battery=st.integers(0, 0xFFFF), flags=st.integers(0, 15),
)
def test_nbiot_round_trip(
    device: int, seq: int, k: int, width: int, counts: list[int], index: int, battery: int, flags: int
) -> None:
    period_end = (k * 3600) // width * width
    data = nbiot.encode(KEY, device=device, seq=seq, period_end=period_end, bucket_seconds=width,
                        counts=counts, index=index, battery_mv=battery, flags=flags)
    frame = nbiot.parse(data)
    assert nbiot.verify(frame, KEY)
    assert (frame.device, frame.seq, frame.period_end, frame.bucket_seconds) == (device, seq, period_end, width)
    assert (list(frame.counts), frame.index, frame.battery_mv, frame.flags) == (counts, index, battery, flags)
    reading = nbiot.to_reading(frame, 1.5, "trace", data)
    assert decode_raw(encode_raw([reading])).readings == [reading]


@given(
    index=st.integers(0, 2**32 - 1), counts=st.lists(st.integers(0, 0xFFF), min_size=4, max_size=4),
    battery=st.integers(0, 255).map(lambda b: 2000 + 10 * b), flags=st.integers(0, 7),
)
def test_sigfox_payload_round_trip(index: int, counts: list[int], battery: int, flags: int) -> None:
    payload = sigfox.encode_payload(index=index, counts=counts, battery_mv=battery, flags=flags)
    decoded_flags, decoded_index, decoded_counts, decoded_battery = sigfox.decode_payload(payload)
    assert (decoded_index, decoded_counts, decoded_battery) == (index, counts, battery)
    assert bool(decoded_flags & Flags.TAMPER) == bool(flags & 0x2)


@settings(max_examples=3000)
@given(st.binary(max_size=600))
def test_nbiot_fuzz_only_codec_errors(data: bytes) -> None:
    try:
        frame = nbiot.parse(data)
    except CodecError:
        return
    nbiot.verify(frame, KEY)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10,
)
callback_st = st.fixed_dictionaries(
    {},
    optional={
        "device": st.text(alphabet=string.hexdigits, max_size=10) | json_values,
        "time": st.integers(-5, 2**33) | json_values,
        "seqNumber": st.integers(-5, 5000) | json_values,
        "data": st.binary(max_size=14).map(bytes.hex) | json_values,
        "duplicate": st.booleans() | json_values,
        "rssi": st.floats(allow_nan=False) | json_values,
        "station": json_values,
    },
)


@settings(max_examples=3000)
@given(callback_st | json_values)
def test_sigfox_fuzz_only_codec_errors(body: object) -> None:
    try:
        reading = sigfox.decode_callback(body, 0.0, "t")
    except CodecError as exc:
        assert exc.reason in ("bad_json", "bad_field", "payload")
        return
    assert reading.device == reading.device.upper()
    assert len(reading.counts) == 4


def _stored(reading: Reading) -> StoredRaw:
    """What the readings table keeps of a reading."""
    return StoredRaw(reading.device, reading.seq, reading.device_time, reading.received_at, reading.trace_id,
                     reading.payload)


@given(callback_st)
def test_sigfox_redecode_reads_what_the_callback_gave(body: dict[str, object]) -> None:
    try:
        reading = sigfox.decode_callback(body, 1.5, "t")
    except CodecError:
        return
    assert CODECS["sigfox"].redecode(_stored(reading)) == msgspec.structs.replace(reading, meta=None)
    # The readings table does not keep the period end: the codec must give it back from the device time.
    assert CODECS["sigfox"].period_end(reading.device_time) == reading.period_end


def test_nbiot_redecode_reads_the_datagram() -> None:
    reading = nbiot.to_reading(nbiot.parse(VECTOR), 1.5, "t", VECTOR)
    assert CODECS["nbiot"].redecode(_stored(reading)) == reading
    assert CODECS["nbiot"].period_end(reading.device_time) == reading.period_end


@pytest.mark.parametrize("protocol", sorted(CODECS))
@given(a=st.integers(0, 2**33), b=st.integers(0, 2**33))
def test_a_codecs_period_end_never_goes_back_as_device_time_goes_on(protocol: str, a: int, b: int) -> None:
    """What lets a device's history be walked along the readings' primary key, (device_time, seq)."""
    period_end = CODECS[protocol].period_end
    earlier, later = sorted((a, b))
    assert period_end(earlier) <= period_end(later)


@pytest.mark.parametrize("protocol", sorted(CODECS))
def test_redecode_refuses_a_bad_payload(protocol: str) -> None:
    with pytest.raises(CodecError):
        CODECS[protocol].redecode(StoredRaw("1", 1, 1763856000, 0.0, "t", b"\x10"))


@pytest.mark.parametrize(("protocol", "given", "canonical", "number"), [
    ("nbiot", "0356938035643809", "356938035643809", 356938035643809),
    ("nbiot", str(2**64 - 1), str(2**64 - 1), 2**64 - 1),
    ("sigfox", "001a2b", "1A2B", 0x1A2B),
    ("sigfox", "0", "0", 0),
    ("sigfox", "FFFFFFFF", "FFFFFFFF", 2**32 - 1),
    ("lorawan", "0004a30b001c0530", "0004A30B001C0530", 0x0004A30B001C0530),
    ("lorawan", "FFFFFFFFFFFFFFFF", "FFFFFFFFFFFFFFFF", 2**64 - 1),
    ("lorawan", "0000000000000000", "0000000000000000", 0),
])
def test_id_forms(protocol: str, given: str, canonical: str, number: int) -> None:
    codec = codec_of(protocol)
    assert codec.canonical(given) == canonical
    assert codec.number(canonical) == number and codec.text(number) == canonical


@pytest.mark.parametrize(("protocol", "given"), [
    ("nbiot", "1A"), ("nbiot", str(2**64)), ("nbiot", "-1"), ("nbiot", "\u0661"), ("nbiot", ""),
    ("sigfox", "123456789"), ("sigfox", "12G"), ("sigfox", ""), ("sigfox", "+1"), ("lorawan", "1"),
    ("lorawan", "0004A30B001C053"), ("lorawan", "0004A30B001C05300"), ("lorawan", "0004A30B001C053G"),
    ("unknown", "1"),
])
def test_ids_a_protocol_cannot_carry(protocol: str, given: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(given)) if protocol in CODECS else "unknown protocol"):
        codec_of(protocol).canonical(given)


@pytest.mark.parametrize("protocol", sorted(CODECS))
def test_flag_bits_are_what_decoding_maps(protocol: str) -> None:
    codec = CODECS[protocol]
    for bit, flag in codec.flag_bits:
        if protocol == "nbiot":
            frame = nbiot.encode(KEY, device=1, seq=1, period_end=1763856000, bucket_seconds=900, counts=[1],
                                 index=1, battery_mv=3600, flags=bit)
            flags = nbiot.to_reading(nbiot.parse(frame), 0.0, "t", frame).flags
        else:
            flags = sigfox.decode_payload(sigfox.encode_payload(index=1, counts=[1] * 4, battery_mv=3600,
                                                                flags=bit))[0]
        assert flags == flag
