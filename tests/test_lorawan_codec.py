"""LoRaWAN uplinks as ChirpStack v4 and The Things Stack v3 deliver them: their documented example bodies (the
payload replaced by a v1 payload), round trips, and fuzzing that only ever raises CodecError."""

from __future__ import annotations

import base64
import copy
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pulsestack.wire import lorawan, sigfox
from pulsestack.wire.codecs import CODECS
from pulsestack.wire.errors import CodecError
from pulsestack.wire.protocol import StoredRaw
from pulsestack.wire.reading import Flags, Reading

PAYLOAD = sigfox.encode_payload(index=123456, counts=[12, 0, 7, 4095], battery_mv=3600, flags=0x1)
B64 = base64.b64encode(PAYLOAD).decode()

# ChirpStack v4 `up` event, from the example in its documentation (Integrations > Event types), `data` replaced.
CHIRPSTACK_UP: dict[str, Any] = {
    "deduplicationId": "3ac7e3c4-4401-4b8d-9386-a5c902f9202d",
    "time": "2022-07-18T09:33:28.823500726+00:00",
    "deviceInfo": {
        "tenantId": "52f14cd4-c6f1-4fbd-8f87-4025e1d49242", "tenantName": "ChirpStack",
        "applicationId": "17c82e96-be03-4f38-aef3-f83d48582d97", "applicationName": "Test application",
        "deviceProfileId": "14855bf7-d10d-4aee-b618-ebfcb64dc7ad", "deviceProfileName": "Test device-profile",
        "deviceName": "Test device", "devEui": "0101010101010101", "tags": {"key": "value"},
    },
    "devAddr": "00189440",
    "dr": 1,
    "fCnt": 4,
    "fPort": 1,
    "data": B64,
    "rxInfo": [{
        "gatewayId": "0016c001f153a14c", "uplinkId": 4217106255, "rssi": -36, "snr": 10.5,
        "context": "E3OWOQ==", "metadata": {"region_name": "eu868", "region_common_name": "EU868"},
    }],
    "txInfo": {"frequency": 867100000, "modulation": {"lora": {
        "bandwidth": 125000, "spreadingFactor": 11, "codeRate": "CR_4_5",
    }}},
}

# The Things Stack v3 uplink message, from the example in its documentation (Integrations > Data Formats),
# `frm_payload` replaced and `decoded_payload` dropped.
TTS_UP: dict[str, Any] = {
    "end_device_ids": {
        "device_id": "dev1", "application_ids": {"application_id": "app1"},
        "dev_eui": "0004A30B001C0530", "join_eui": "800000000000000C", "dev_addr": "00BCB929",
    },
    "correlation_ids": ["as:up:01E0WS4R5J8YKAY6F4FG7XS6HA", "gs:conn:01E0WS1J8F9KRP4QP6DN4M2Y3S"],
    "received_at": "2020-02-12T15:15:45.787Z",
    "uplink_message": {
        "session_key_id": "AXBSH1Pk6Z0G166...",
        "f_port": 1,
        "f_cnt": 25,
        "frm_payload": B64,
        "rx_metadata": [{
            "gateway_ids": {"gateway_id": "gtw1", "eui": "9C5C8E00001A05C4"},
            "time": "2020-02-12T15:15:45.787Z", "timestamp": 2463457000, "rssi": -35, "channel_rssi": -35,
            "snr": 5.2, "location": {"latitude": 37.97155556731436, "longitude": 23.72678801175413,
                                     "altitude": 2, "source": "SOURCE_REGISTRY"},
            "uplink_token": "ChIKEA...", "channel_index": 2,
        }],
        "settings": {"data_rate": {"lora": {"bandwidth": 125000, "spreading_factor": 7}},
                     "coding_rate": "4/6", "frequency": "868500000", "timestamp": 2463457000},
        "received_at": "2020-02-12T15:15:45.787Z",
        "consumed_airtime": "0.056576s",
    },
}


def _quarter(text: str) -> int:
    seconds = int(datetime.fromisoformat(text[:19]).replace(tzinfo=UTC).timestamp())
    return seconds - seconds % 900


def test_chirpstack_documented_uplink() -> None:
    reading = lorawan.decode_chirpstack("up", CHIRPSTACK_UP, 1.5, "t")
    assert isinstance(reading, Reading)
    assert (reading.protocol, reading.device, reading.seq) == ("lorawan", "0101010101010101", 4)
    assert reading.device_time == reading.period_end == _quarter("2022-07-18T09:33:28") == 1658136600
    assert (reading.bucket_seconds, reading.counts, reading.index, reading.battery_mv) == (900, [12, 0, 7, 4095],
                                                                                           123456, 3600)
    assert reading.flags == Flags.BATTERY_LOW and reading.payload == PAYLOAD
    assert reading.meta == {"server": "chirpstack", "uplinkId": "3ac7e3c4-4401-4b8d-9386-a5c902f9202d",
                            "gateways": 1, "rssi": -36, "snr": 10.5}


def test_tts_documented_uplink() -> None:
    reading = lorawan.decode_tts(TTS_UP, 1.5, "t")
    assert isinstance(reading, Reading)
    assert (reading.device, reading.seq, reading.device_time) == ("0004A30B001C0530", 25,
                                                                  _quarter("2020-02-12T15:15:45"))
    assert reading.counts == [12, 0, 7, 4095]
    assert reading.meta == {"server": "tts", "uplinkId": "as:up:01E0WS4R5J8YKAY6F4FG7XS6HA", "gateways": 1,
                            "rssi": -35, "snr": 5.2}


def test_omitted_zero_values_mean_zero() -> None:
    """Protobuf-JSON leaves out fCnt 0 (the first uplink after a join)."""
    body = copy.deepcopy(CHIRPSTACK_UP)
    del body["fCnt"], body["rxInfo"], body["deduplicationId"]
    reading = lorawan.decode_chirpstack("up", body, 1.5, "t")
    assert isinstance(reading, Reading) and reading.seq == 0 and reading.meta == {"server": "chirpstack"}
    tts = copy.deepcopy(TTS_UP)
    del tts["uplink_message"]["f_cnt"]
    reading = lorawan.decode_tts(tts, 1.5, "t")
    assert isinstance(reading, Reading) and reading.seq == 0


@pytest.mark.parametrize(("port", "data"), [(2, PAYLOAD), (None, PAYLOAD), (1, PAYLOAD[:11]), (1, b""),
                                            (1, PAYLOAD + b"\0"), (1, b"\x20" + PAYLOAD[1:])])
def test_odd_frames_are_payload_errors_naming_the_device(port: int | None, data: bytes) -> None:
    body = copy.deepcopy(CHIRPSTACK_UP)
    body["data"] = base64.b64encode(data).decode()
    if port is None:
        del body["fPort"]  # port 0: MAC commands only
    else:
        body["fPort"] = port
    with pytest.raises(CodecError) as caught:
        lorawan.decode_chirpstack("up", body, 1.5, "t")
    assert (caught.value.reason, caught.value.device) == ("payload", "0101010101010101")


@pytest.mark.parametrize(("event", "answer"), [("join", "join"), ("status", "status"), ("ack", "ack"),
                                               ("txack", "txack"), ("log", "log"), ("location", "location"),
                                               ("", "other"), ("bogus\n", "other")])
def test_chirpstack_events_without_a_reading(event: str, answer: str) -> None:
    assert lorawan.decode_chirpstack(event, {"anything": 1}, 1.5, "t") == answer


def test_tts_messages_without_a_reading() -> None:
    join = {"end_device_ids": TTS_UP["end_device_ids"], "join_accept": {"session_key_id": "AXBSH1Pk6Z0G166..."}}
    assert lorawan.decode_tts(join, 1.5, "t") == "join_accept"
    assert lorawan.decode_tts({"end_device_ids": {}}, 1.5, "t") == "other"


@pytest.mark.parametrize(("change", "field"), [
    (lambda b: b["deviceInfo"].update(devEui="01010101010101"), "deviceInfo.devEui"),
    (lambda b: b.pop("deviceInfo"), "deviceInfo"),
    (lambda b: b.update(fCnt=2**32), "fCnt"),
    (lambda b: b.update(fCnt=-1), "fCnt"),
    (lambda b: b.update(fCnt=True), "fCnt"),
    (lambda b: b.update(time="2022-07-18 09:33:28"), "time"),
    (lambda b: b.pop("time"), "time"),
    (lambda b: b.update(data="not base64!"), "data"),
    (lambda b: b.update(deduplicationId="x" * 65), "deduplicationId"),
    (lambda b: b.update(rxInfo=[{"rssi": "loud"}]), "rxInfo[].rssi"),
])
def test_chirpstack_bad_fields_are_named(change: Any, field: str) -> None:
    body = copy.deepcopy(CHIRPSTACK_UP)
    change(body)
    with pytest.raises(CodecError) as caught:
        lorawan.decode_chirpstack("up", body, 1.5, "t")
    assert (caught.value.reason, caught.value.field) == ("bad_field", field)


def test_the_best_gateway_signal_is_kept() -> None:
    body = copy.deepcopy(CHIRPSTACK_UP)
    body["rxInfo"] = [{"rssi": None, "snr": 1.0}, {"rssi": -90, "snr": 2.5}, {"rssi": -80}, {}]
    reading = lorawan.decode_chirpstack("up", body, 1.5, "t")
    assert isinstance(reading, Reading) and reading.meta is not None
    assert (reading.meta["gateways"], reading.meta["rssi"], "snr" in reading.meta) == (4, -80, False)


payloads = st.builds(
    sigfox.encode_payload, index=st.integers(0, 2**32 - 1), counts=st.lists(st.integers(0, 4095), min_size=4,
                                                                            max_size=4),
    battery_mv=st.integers(2000, 4550).map(lambda mv: mv - mv % 10), flags=st.integers(0, 7),
)


@given(st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1), st.integers(1, 2**32 - 1), payloads)
def test_chirpstack_round_trip_and_redecode(device: int, seq: int, time: int, payload: bytes) -> None:
    reading = lorawan.decode_chirpstack("up", lorawan.chirpstack_uplink(device, seq, time, payload), 1.5, "t")
    assert isinstance(reading, Reading)
    assert (reading.device, reading.seq, reading.device_time) == (f"{device:016X}", seq, time - time % 900)
    assert CODECS["lorawan"].number(reading.device) == device
    assert reading.payload == payload
    assert sigfox.encode_payload(index=reading.index, counts=reading.counts, battery_mv=reading.battery_mv,
                                 flags=payload[0] & 0x7) == payload
    stored = StoredRaw(reading.device, reading.seq, reading.device_time, reading.received_at, reading.trace_id,
                       reading.payload)
    assert CODECS["lorawan"].redecode(stored) == msgspec.structs.replace(reading, meta=None)
    tts = lorawan.decode_tts(lorawan.tts_uplink(device, seq, time, payload), 1.5, "t")
    assert isinstance(tts, Reading)
    assert msgspec.structs.replace(tts, meta=None) == msgspec.structs.replace(reading, meta=None)


@given(st.integers(0, 900 * 4), st.sampled_from(["Z", "+00:00"]), st.integers(0, 999_999_999))
def test_retries_and_gateways_within_a_quarter_hour_share_an_identity(offset: int, zone: str, nanos: int) -> None:
    start = 1763856000
    late = datetime.fromtimestamp(start + offset, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos:09d}{zone}"
    body = copy.deepcopy(CHIRPSTACK_UP)
    body["time"] = late
    reading = lorawan.decode_chirpstack("up", body, 1.5, "t")
    assert isinstance(reading, Reading)
    assert reading.device_time == start + offset - offset % 900


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10,
)
times = st.datetimes(timezones=st.just(UTC)).map(datetime.isoformat)
chirpstack_st = st.fixed_dictionaries({}, optional={
    "deduplicationId": st.uuids().map(str) | json_values,
    "time": times | json_values,
    "deviceInfo": st.fixed_dictionaries({}, optional={"devEui": st.text("0123456789abcdefABCDEF", min_size=15,
                                                                        max_size=17) | json_values}) | json_values,
    "fCnt": st.integers(-5, 2**33) | json_values,
    "fPort": st.integers(-1, 300) | json_values,
    "data": st.binary(max_size=14).map(lambda b: base64.b64encode(b).decode()) | json_values,
    "rxInfo": st.lists(st.fixed_dictionaries({}, optional={"rssi": json_values, "snr": json_values}),
                       max_size=3) | json_values,
})
tts_st = st.fixed_dictionaries({}, optional={
    "end_device_ids": st.fixed_dictionaries({}, optional={"dev_eui": st.text("0123456789ABCDEF", min_size=16,
                                                                             max_size=16) | json_values}),
    "correlation_ids": st.lists(st.text(max_size=70), max_size=2) | json_values,
    "uplink_message": st.fixed_dictionaries({}, optional={
        "f_cnt": st.integers(-5, 2**33) | json_values, "f_port": st.integers(-1, 300) | json_values,
        "frm_payload": st.binary(max_size=14).map(lambda b: base64.b64encode(b).decode()) | json_values,
        "received_at": times | json_values,
        "rx_metadata": st.lists(st.fixed_dictionaries({}, optional={"rssi": json_values}), max_size=3) | json_values,
    }) | json_values,
    "join_accept": json_values,
})


def _only_codec_errors(decode: Any) -> None:
    try:
        reading = decode()
    except CodecError as exc:
        assert exc.reason in ("bad_json", "bad_field", "payload")
        assert (exc.device is not None) == (exc.reason == "payload")
        return
    if isinstance(reading, Reading):
        assert reading.device == reading.device.upper() and len(reading.device) == 16
        assert reading.device_time % 900 == 0 and 0 <= reading.seq < 2**32
        assert msgspec.msgpack.decode(msgspec.msgpack.encode(reading), type=Reading) == reading


@settings(max_examples=3000)
@given(chirpstack_st | json_values, st.sampled_from(["up", "join", ""]))
def test_chirpstack_fuzz_only_codec_errors(body: object, event: str) -> None:
    _only_codec_errors(lambda: lorawan.decode_chirpstack(event, body, 0.0, "t"))


@settings(max_examples=3000)
@given(tts_st | json_values)
def test_tts_fuzz_only_codec_errors(body: object) -> None:
    _only_codec_errors(lambda: lorawan.decode_tts(body, 0.0, "t"))
