"""The edge's allow-list names real methods, never an internal one, and refuses only real fields;
the gRPC-web wire helpers refuse bad framing, timeouts and content types deliberately."""

from __future__ import annotations

import base64
import struct

import grpc
import pytest
from google.protobuf import descriptor_pool

import edge.registry  # noqa: F401 - the default pool knows every method
from edge.exposed import BY_METHOD, EXPOSED, NEVER_EXPOSED
from edge.methods import resolve
from edge.wire import Codec, Refused, codec_for, only_message, parse_timeout, percent, unbase64

MAX = 1024


def _method(name: str):  # type: ignore[no-untyped-def]
    service, _, method = name.partition("/")
    return descriptor_pool.Default().FindServiceByName(service).methods_by_name[method]


def test_every_allow_listed_method_exists_and_is_no_client_stream() -> None:
    methods = resolve(EXPOSED)
    assert set(methods) == {rpc.method for rpc in EXPOSED}
    assert len(BY_METHOD) == len(EXPOSED), "a method is listed twice"
    for rpc in EXPOSED:
        assert not _method(rpc.method).client_streaming
        assert rpc.reason and "\n" not in rpc.reason


def test_no_internal_method_is_exposed() -> None:
    for name in NEVER_EXPOSED:
        _method(name)  # a misspelt entry would protect nothing
        assert name not in BY_METHOD
    # The named ones of the issue, spelt out once more so the set itself cannot shrink.
    for name in (
        "delivery.location.v1.LocationService/FindNearbyDrivers",
        "delivery.location.v1.LocationService/FollowDrivers",
        "delivery.location.v1.LocationService/StreamLocation",
        "delivery.matching.v1.MatchingService/DispatchOrder",
        "delivery.matching.v1.MatchingService/GetDispatchStatus",
        "delivery.order.v1.OrderService/AssignCourier",
        "delivery.order.v1.OrderService/RunRetention",
    ):
        assert name in NEVER_EXPOSED


def test_refused_fields_are_fields_of_the_request() -> None:
    refusing = [rpc for rpc in EXPOSED if rpc.refused_fields]
    assert [rpc.method for rpc in refusing] == [
        "delivery.location.v1.LocationService/SetAvailability"
    ]
    for rpc in refusing:
        fields = _method(rpc.method).input_type.fields_by_name
        assert all(name in fields for name in rpc.refused_fields)


def test_resolve_refuses_unknown_methods_and_client_streams() -> None:
    from edge.exposed import Exposed

    with pytest.raises(ValueError, match="no proto defines it"):
        resolve([Exposed("delivery.order.v1.OrderService/Nope", "x")])
    with pytest.raises(ValueError, match="client stream"):
        resolve([Exposed("delivery.location.v1.LocationService/StreamLocation", "x")])


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1S", 1.0),
        ("250m", 0.25),
        ("2M", 120.0),
        ("1H", 3600.0),
        ("99999999n", 0.099999999),
        ("24H", 86400.0),
        # Past a day is a day: gRPC core overflows on the spec's largest values.
        ("25H", 86400.0),
        ("99999999H", 86400.0),
    ],
)
def test_grpc_timeouts_are_read(value: str, seconds: float) -> None:
    assert parse_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value", ["", "S", "1", "1s", "123456789S", "-1S", "1.5S", " 1S", "\u0661S"]
)
def test_bad_grpc_timeouts_are_invalid_argument(value: str) -> None:
    with pytest.raises(Refused) as caught:
        parse_timeout(value)
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT


def test_content_types_pick_the_codec_and_others_are_unimplemented() -> None:
    assert codec_for("application/grpc-web") == Codec("application/grpc-web", False, False)
    assert codec_for("application/grpc-web+proto; charset=x").json is False
    assert codec_for("Application/GRPC-Web+JSON") == Codec("application/grpc-web+json", False, True)
    assert codec_for("application/grpc-web-text+json") == Codec(
        "application/grpc-web-text+json", True, True
    )
    for bad in ("", "application/json", "application/grpc", "application/grpc-web+thrift"):
        with pytest.raises(Refused) as caught:
            codec_for(bad)
        assert caught.value.code is grpc.StatusCode.UNIMPLEMENTED


def _framed(payload: bytes, flag: int = 0) -> bytes:
    return struct.pack(">BI", flag, len(payload)) + payload


def test_one_whole_message_is_taken() -> None:
    assert only_message(_framed(b"abc"), MAX) == b"abc"
    assert only_message(_framed(b""), MAX) == b""


@pytest.mark.parametrize(
    ("body", "code", "words"),
    [
        (b"", grpc.StatusCode.INVALID_ARGUMENT, "no gRPC-web frame"),
        (b"\x00\x00\x00", grpc.StatusCode.INVALID_ARGUMENT, "no gRPC-web frame"),
        (_framed(b"abc")[:-1], grpc.StatusCode.INVALID_ARGUMENT, "declares a 3-byte message"),
        (_framed(b"a") + _framed(b"b"), grpc.StatusCode.INVALID_ARGUMENT, "not more"),
        (_framed(b"a") + b"\x00", grpc.StatusCode.INVALID_ARGUMENT, "1 bytes follow"),
        (_framed(b"a", 0x80), grpc.StatusCode.INVALID_ARGUMENT, "trailer"),
        (_framed(b"a", 0x01), grpc.StatusCode.UNIMPLEMENTED, "compressed"),
        (_framed(b"a", 0x02), grpc.StatusCode.INVALID_ARGUMENT, "flags 0x02"),
        (b"\x00\xff\xff\xff\xff", grpc.StatusCode.RESOURCE_EXHAUSTED, "4294967295 bytes"),
        (_framed(b"x" * (MAX + 1)), grpc.StatusCode.RESOURCE_EXHAUSTED, f"at most {MAX}"),
    ],
)
def test_bad_framing_is_refused_deliberately(
    body: bytes, code: grpc.StatusCode, words: str
) -> None:
    with pytest.raises(Refused) as caught:
        only_message(body, MAX)
    assert caught.value.code is code
    assert words in caught.value.message


def test_text_bodies_decode_whole_or_per_frame_and_refuse_what_is_not_base64() -> None:
    body = _framed(b"a") + _framed(b"bc")
    assert unbase64(base64.b64encode(body)) == body
    per_frame = base64.b64encode(_framed(b"a")) + base64.b64encode(_framed(b"bc"))
    assert unbase64(per_frame) == body
    with pytest.raises(Refused) as caught:
        unbase64(b"not base64!")
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT


def test_grpc_message_is_percent_encoded_utf8() -> None:
    assert percent("100% fine") == "100%25 fine"
    assert percent("café\r\n") == "caf%C3%A9%0D%0A"


def test_edge_settings_come_from_the_environment() -> None:
    from edge.server import edge_config
    from mesh.settings import Settings

    settings = Settings.from_env("edge", env={})
    config = edge_config(settings, {})
    assert config.allow_origins == frozenset()
    assert config.max_request_bytes == 1024 * 1024
    assert (config.body_timeout_s, config.idle_timeout_s) == (10.0, 75.0)
    config = edge_config(
        settings,
        {
            "DELIVERY_EDGE_ALLOW_ORIGINS": "https://a.example, https://b.example:8443,",
            "DELIVERY_EDGE_MAX_REQUEST_BYTES": "2048",
            "DELIVERY_EDGE_UNARY_TIMEOUT_S": "5",
            "DELIVERY_EDGE_BODY_TIMEOUT_S": "0.5",
            "DELIVERY_EDGE_IDLE_TIMEOUT_S": "20",
        },
    )
    assert config.allow_origins == {"https://a.example", "https://b.example:8443"}
    assert (config.max_request_bytes, config.default_timeout_s) == (2048, 5.0)
    assert (config.body_timeout_s, config.idle_timeout_s) == (0.5, 20.0)
    for env in (
        {"DELIVERY_EDGE_ALLOW_ORIGINS": "*"},
        {"DELIVERY_EDGE_ALLOW_ORIGIN": "*"},
        {"DELIVERY_EDGE_MAX_REQUEST_BYTES": "0"},
        {"DELIVERY_EDGE_BODY_TIMEOUT_S": "0"},
        {"DELIVERY_EDGE_IDLE_TIMEOUT_S": "-1"},
    ):
        with pytest.raises(ValueError):
            edge_config(settings, env)


def test_docs_list_every_exposed_rpc() -> None:
    from pathlib import Path

    page = (Path(__file__).resolve().parents[2] / "docs" / "edge.md").read_text()
    missing = [rpc.method for rpc in EXPOSED if f"`{rpc.method}`" not in page]
    assert not missing, f"add a row to docs/edge.md for: {missing}"
