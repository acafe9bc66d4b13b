"""What the edge refuses, it refuses itself: methods off the allow-list, service tokens, bad
bodies, oversized requests, bad timeouts and a courier override all end in a deliberate gRPC
status with no upstream call, which a real gRPC server behind the edge records. Also: deadlines
reach the service, a browser that goes away cancels its stream upstream, and CORS grants only
configured origins."""

from __future__ import annotations

import asyncio
import base64
import gzip
import logging
from collections.abc import AsyncIterator

import aiohttp
import grpc
import pytest
from google.protobuf import descriptor_pool

from delivery.common.v1 import common_pb2
from delivery.location.v1 import location_service_pb2
from delivery.tracking.v1 import tracking_service_pb2
from edge.app import MAX_HEADER_CHARS, EdgeConfig
from edge.exposed import BY_METHOD, NEVER_EXPOSED
from edge.wire import MAX_TIMEOUT_S
from tests.integration.edge_harness import (
    GARBAGE,
    PACKAGES,
    SILENT,
    Upstream,
    call,
    framed,
    post,
    recording_upstream,
    serve_edge,
)

#: How long anything may take before a test gives up.
BOUND_S = 30.0
GET_ME = "/delivery.order.v1.AccountService/GetMe"
TRACK = "/delivery.tracking.v1.TrackingService/TrackOrder"
SET_AVAILABILITY = "/delivery.location.v1.LocationService/SetAvailability"
SHOP = "https://shop.example"
MAX_BYTES = 1024


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    async with recording_upstream() as recorder:
        yield recorder


@pytest.fixture
async def edge(upstream: Upstream) -> AsyncIterator[str]:
    config = EdgeConfig(
        routes=upstream.routes(),
        allow_origins=frozenset({SHOP}),
        default_timeout_s=3600.0,
        max_request_bytes=MAX_BYTES,
    )
    async with serve_edge(config) as url:
        yield url


def _unexposed() -> list[str]:
    """Every method of the contracts' services that is not on the allow-list, and a few more."""
    pool = descriptor_pool.Default()
    names = set(NEVER_EXPOSED)
    for name in PACKAGES:
        for service in (
            "AccountService",
            "MerchantService",
            "OrderService",
            "LocationService",
            "MatchingService",
            "TrackingService",
        ):
            try:
                descriptor = pool.FindServiceByName(f"{name}.{service}")
            except KeyError:
                continue
            names |= {f"{descriptor.full_name}/{m.name}" for m in descriptor.methods}
    names -= set(BY_METHOD)
    names |= {
        "delivery.order.v1.OrderService/Nope",
        "grpc.health.v1.Health/Watch",
        "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    }
    return sorted(names)


async def test_allowed_calls_reach_the_service_with_their_deadline(
    edge: str, upstream: Upstream
) -> None:
    answer = await call(
        edge, GET_ME, b"", headers={"authorization": "Bearer abc", "x-request-id": "r1"}
    )
    assert answer.code is grpc.StatusCode.OK
    timed = await call(edge, GET_ME, b"", headers={"grpc-timeout": "5S"})
    assert timed.code is grpc.StatusCode.OK
    assert upstream.calls == [GET_ME, GET_ME]
    assert upstream.metadata[0]["authorization"] == "Bearer abc"
    assert upstream.metadata[0]["x-request-id"] == "r1"
    # A unary call without grpc-timeout gets the edge's default (an hour here), with one the
    # deadline it asked for (gRPC rounds a deadline up a little on the wire).
    first, second = upstream.remaining
    assert first is not None and 60 < first <= 3600
    assert second is not None and 0 < second <= 6


async def test_server_streams_get_a_deadline_only_when_asked_and_end_at_it(
    edge: str, upstream: Upstream
) -> None:
    request = tracking_service_pb2.TrackOrderRequest(order_id=SILENT).SerializeToString()
    answer = await call(edge, TRACK, request, headers={"grpc-timeout": "300m"})
    assert answer.code is grpc.StatusCode.DEADLINE_EXCEEDED
    remaining = upstream.remaining[0]
    assert remaining is not None and remaining <= 1
    upstream.stream_started.clear()
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            edge + TRACK,
            data=framed(request),
            headers={"content-type": "application/grpc-web+proto"},
        )
        await asyncio.wait_for(upstream.stream_started.wait(), BOUND_S)
        assert upstream.remaining[1] is None, "a stream without grpc-timeout has no deadline"
        response.close()


async def test_methods_off_the_allow_list_are_unimplemented_with_no_upstream_call(
    edge: str, upstream: Upstream
) -> None:
    names = _unexposed()
    assert "delivery.location.v1.LocationService/FindNearbyDrivers" in names
    for name in names:
        answer = await call(edge, f"/{name}", b"", headers={"authorization": "Bearer abc"})
        assert answer.status == 200
        assert answer.code is grpc.StatusCode.UNIMPLEMENTED, name
        assert answer.reason() == "METHOD_NOT_EXPOSED"
        assert "not served to browsers" in answer.message
    assert upstream.calls == []
    # The same edge forwards what is listed: the recorder would have seen the others.
    assert (await call(edge, GET_ME, b"")).code is grpc.StatusCode.OK
    assert upstream.calls == [GET_ME]


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer svc.matching.0123",
        "Bearer  svc.matching.0123",
        "Bearer    svc.matching.0123",
        "BEARER svc.matching.0123",
        "bearer svc.matching.0123",
        "bEaReR svc.matching.0123",
        "bearer\tsvc.matching.0123",
        "Bearer\t svc.matching.0123",
        "svc.matching.0123",
        "Bearer svc.",
    ],
)
async def test_service_tokens_are_refused_however_written(
    edge: str, upstream: Upstream, authorization: str
) -> None:
    answer = await call(edge, GET_ME, b"", headers={"authorization": authorization})
    assert answer.code is grpc.StatusCode.UNAUTHENTICATED
    assert answer.reason() in ("SERVICE_TOKEN_REFUSED", "MALFORMED_AUTHORIZATION")
    assert upstream.calls == []


async def test_two_authorization_headers_are_refused(edge: str, upstream: Upstream) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            edge + GET_ME,
            data=framed(b""),
            headers=[
                ("content-type", "application/grpc-web+proto"),
                ("authorization", "Bearer abc"),
                ("authorization", "Bearer svc.matching.0123"),
            ],
        ) as response,
    ):
        assert b"grpc-status:16" in await response.read()
    assert upstream.calls == []


def _bad_bodies() -> list[tuple[str, bytes, str, grpc.StatusCode, str]]:
    proto = "application/grpc-web+proto"
    text = "application/grpc-web-text"
    json = "application/grpc-web+json"
    invalid, unimplemented = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNIMPLEMENTED
    return [
        ("empty body", b"", proto, invalid, "BAD_FRAMING"),
        ("3 bytes", b"\x00\x00\x00", proto, invalid, "BAD_FRAMING"),
        ("frame longer than body", framed(b"abc")[:-1], proto, invalid, "BAD_FRAMING"),
        (
            "huge declared length",
            b"\x00\xff\xff\xff\xff",
            proto,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "REQUEST_TOO_LARGE",
        ),
        ("two messages", framed(b"") + framed(b""), proto, invalid, "BAD_FRAMING"),
        ("trailing byte", framed(b"") + b"\x00", proto, invalid, "BAD_FRAMING"),
        ("trailer frame", framed(b"", 0x80), proto, invalid, "BAD_FRAMING"),
        ("compressed", framed(b"", 0x01), proto, unimplemented, "COMPRESSION_NOT_SUPPORTED"),
        ("text not base64", b"%%%%", text, invalid, "BAD_FRAMING"),
        ("text frame short", base64.b64encode(framed(b"ab")[:-1]), text, invalid, "BAD_FRAMING"),
        ("no content type", framed(b""), "", unimplemented, "UNSUPPORTED_CONTENT_TYPE"),
        ("json content type", b"{}", "application/json", unimplemented, "UNSUPPORTED_CONTENT_TYPE"),
        ("plain text", framed(b""), "text/plain", unimplemented, "UNSUPPORTED_CONTENT_TYPE"),
        ("native grpc", framed(b""), "application/grpc", unimplemented, "UNSUPPORTED_CONTENT_TYPE"),
        (
            "unknown codec",
            framed(b""),
            "application/grpc-web+thrift",
            unimplemented,
            "UNSUPPORTED_CODEC",
        ),
        ("not json", framed(b"{"), json, invalid, "BAD_JSON"),
        ("unknown field", framed(b'{"nope": 1}'), json, invalid, "BAD_JSON"),
        ("wrong type", framed(b'{"orderId": 5}'), json, invalid, "BAD_JSON"),
        ("array", framed(b"[]"), json, invalid, "BAD_JSON"),
        ("number", framed(b"7"), json, invalid, "BAD_JSON"),
        ("null", framed(b"null"), json, invalid, "BAD_JSON"),
        ("not utf-8", framed(b'{"orderId": "\xff"}'), json, invalid, "BAD_JSON"),
        ("deep", framed(b"[" * 500 + b"]" * 500), json, invalid, "BAD_JSON"),
        ("deep object", framed(b'{"a":' * 150 + b"1" + b"}" * 150), json, invalid, "BAD_JSON"),
        ("unknown enum", framed(b'{"status": "NOPE"}'), json, invalid, "BAD_JSON"),
    ]


@pytest.mark.parametrize(
    ("body", "content_type", "code", "reason"),
    [case[1:] for case in _bad_bodies()],
    ids=[case[0] for case in _bad_bodies()],
)
async def test_bad_bodies_get_a_deliberate_status_and_nothing_is_forwarded(
    edge: str,
    upstream: Upstream,
    body: bytes,
    content_type: str,
    code: grpc.StatusCode,
    reason: str,
) -> None:
    path = SET_AVAILABILITY if b"status" in body else TRACK
    answer = await post(edge, path, body, content_type=content_type)
    assert answer.status == 200
    assert answer.code is code
    assert answer.reason() == reason
    assert answer.message
    assert upstream.calls == []


async def test_a_binary_message_that_is_no_message_is_refused_where_the_edge_reads_it(
    edge: str, upstream: Upstream
) -> None:
    answer = await call(edge, SET_AVAILABILITY, b"\x0a\xff")
    assert answer.code is grpc.StatusCode.INVALID_ARGUMENT
    assert answer.reason() == "BAD_MESSAGE"
    assert upstream.calls == []


async def test_the_request_cap_answers_a_grpc_status(edge: str, upstream: Upstream) -> None:
    big = b"\x0a" + b"x" * MAX_BYTES  # one byte over the cap, whatever it holds
    for text in (False, True):
        answer = await call(edge, GET_ME, big, text=text)
        assert answer.status == 200
        assert answer.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert answer.reason() == "REQUEST_TOO_LARGE"
        assert f"at most {MAX_BYTES} bytes" in answer.message

    async def chunked() -> AsyncIterator[bytes]:
        # No Content-Length: the edge stops reading once the body passes the cap.
        yield framed(b"")[:5]
        for _ in range(64):
            yield b"x" * 1024

    answer = await post(edge, GET_ME, chunked())  # type: ignore[arg-type]
    assert answer.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert upstream.calls == []
    # A message at the cap goes through.
    request = tracking_service_pb2.TrackOrderRequest(order_id="o" * (MAX_BYTES - 3))
    assert request.ByteSize() == MAX_BYTES
    assert (await call(edge, GET_ME, request.SerializeToString())).code is grpc.StatusCode.OK
    assert upstream.calls == [GET_ME]


async def test_a_body_past_aiohttps_own_limit_is_a_grpc_status_not_a_413(
    upstream: Upstream,
) -> None:
    # The default cap is 1 MiB, aiohttp's own client_max_size too: 2 MiB must still be gRPC.
    async with serve_edge(EdgeConfig(routes=upstream.routes())) as url:
        answer = await call(url, GET_ME, b"x" * (2 << 20))
    assert answer.status == 200
    assert answer.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert upstream.calls == []


@pytest.mark.parametrize("value", ["1.5S", "123456789S", "5s", "S", "-1S", "1 S"])
async def test_bad_grpc_timeouts_are_invalid_argument(
    edge: str, upstream: Upstream, value: str
) -> None:
    answer = await call(edge, GET_ME, b"", headers={"grpc-timeout": value})
    assert answer.code is grpc.StatusCode.INVALID_ARGUMENT
    assert answer.reason() == "BAD_TIMEOUT"
    assert upstream.calls == []


async def test_the_courier_override_of_set_availability_is_refused_at_the_edge(
    edge: str, upstream: Upstream
) -> None:
    override = location_service_pb2.SetAvailabilityRequest(
        request_id="r", status=common_pb2.DRIVER_STATUS_AVAILABLE, driver_id="someone-else"
    )
    refusals = [
        await call(edge, SET_AVAILABILITY, override.SerializeToString()),
        await call(edge, SET_AVAILABILITY, override.SerializeToString(), text=True),
        await call(
            edge,
            SET_AVAILABILITY,
            b'{"status": "DRIVER_STATUS_AVAILABLE", "driverId": "someone-else"}',
            json=True,
        ),
        await call(edge, SET_AVAILABILITY, b'{"driver_id": "x"}', json=True),
    ]
    for answer in refusals:
        assert answer.code is grpc.StatusCode.INVALID_ARGUMENT
        assert answer.reason() == "FIELD_NOT_EXPOSED"
        assert list(answer.violations()) == ["driver_id"]
    assert upstream.calls == []
    # Without it, the courier's own change goes through, byte for byte.
    own = location_service_pb2.SetAvailabilityRequest(
        request_id="r", status=common_pb2.DRIVER_STATUS_AVAILABLE
    )
    assert (await call(edge, SET_AVAILABILITY, own.SerializeToString())).code is grpc.StatusCode.OK
    assert upstream.payloads == [own.SerializeToString()]


async def test_json_requests_are_forwarded_as_binary_messages(
    edge: str, upstream: Upstream
) -> None:
    answer = await call(
        edge,
        TRACK,
        b'{"orderId": "o-1", "resumeAfterSequence": "7"}',
        json=True,
        text=True,
        # The recorder's stream sends one empty message, then nothing until the deadline.
        headers={"grpc-timeout": "500m"},
    )
    assert answer.headers["content-type"] == "application/grpc-web-text+json"
    assert answer.messages == [b"{}"]  # the empty reply, as proto3 JSON
    assert answer.code is grpc.StatusCode.DEADLINE_EXCEEDED
    expected = tracking_service_pb2.TrackOrderRequest(order_id="o-1", resume_after_sequence=7)
    assert upstream.payloads == [expected.SerializeToString()]


async def test_a_reply_that_is_no_message_is_internal_in_json_and_forwarded_in_binary(
    edge: str, upstream: Upstream
) -> None:
    path = "/delivery.tracking.v1.TrackingService/GetEta"
    request = tracking_service_pb2.GetEtaRequest(order_id=GARBAGE)
    as_json = await call(edge, path, b'{"orderId": "garbage"}', json=True)
    assert as_json.code is grpc.StatusCode.INTERNAL
    assert as_json.message == "the service's reply could not be read"
    binary = await call(edge, path, request.SerializeToString())
    assert binary.code is grpc.StatusCode.OK
    assert binary.messages == [b"\x0a\xff"], "binary replies are forwarded byte for byte"


@pytest.mark.parametrize("silent", [False, True], ids=["after-a-message", "before-any"])
async def test_a_browser_that_goes_away_cancels_the_upstream_stream(
    edge: str, upstream: Upstream, silent: bool
) -> None:
    request = tracking_service_pb2.TrackOrderRequest(order_id=SILENT if silent else "o-1")
    session = aiohttp.ClientSession()
    try:
        response = await session.post(
            edge + TRACK,
            data=framed(request.SerializeToString()),
            headers={"content-type": "application/grpc-web+proto", "x-grpc-web": "1"},
        )
        assert response.status == 200
        if silent:
            # The service says nothing: no write to the browser would ever fail.
            await asyncio.wait_for(upstream.stream_started.wait(), BOUND_S)
        else:
            first = await asyncio.wait_for(response.content.readexactly(5), BOUND_S)
            assert first == b"\x00\x00\x00\x00\x00"
        await asyncio.sleep(0.2)
        assert not upstream.stream_cancelled.is_set(), "cancelled while the browser was there"
        response.close()
    finally:
        await session.close()
    await asyncio.wait_for(upstream.stream_cancelled.wait(), BOUND_S)


async def test_cors_grants_configured_origins_only(edge: str, upstream: Upstream) -> None:
    granted = await call(edge, GET_ME, b"", headers={"origin": SHOP})
    assert granted.code is grpc.StatusCode.OK
    assert granted.headers["Access-Control-Allow-Origin"] == SHOP
    assert "Origin" in granted.headers["Vary"]
    exposed = granted.headers["Access-Control-Expose-Headers"].split(",")
    assert {"grpc-status", "grpc-message", "grpc-status-details-bin"} <= set(exposed)
    assert "Access-Control-Allow-Credentials" not in granted.headers
    # A refusal is readable by the page too.
    refused = await call(
        edge, "/delivery.order.v1.OrderService/RunRetention", b"", headers={"origin": SHOP}
    )
    assert refused.headers["Access-Control-Allow-Origin"] == SHOP

    for origin in ("https://evil.example", "null", SHOP + ".evil.example", "http://shop.example"):
        foreign = await call(edge, GET_ME, b"", headers={"origin": origin})
        assert "Access-Control-Allow-Origin" not in foreign.headers
        assert "Access-Control-Expose-Headers" not in foreign.headers
        assert "Origin" in foreign.headers["Vary"]

    async with aiohttp.ClientSession() as session:
        preflight = {"Access-Control-Request-Method": "POST"}
        async with session.options(
            edge + GET_ME,
            headers={
                **preflight,
                "Origin": SHOP,
                "Access-Control-Request-Headers": "authorization,content-type,x-grpc-web",
            },
        ) as response:
            assert response.status == 204
            assert response.headers["Access-Control-Allow-Origin"] == SHOP
            allowed = response.headers["Access-Control-Allow-Headers"].split(",")
            assert {"authorization", "content-type", "x-grpc-web", "grpc-timeout"} <= set(allowed)
        for origin in ("https://evil.example", None):
            headers = {**preflight, **({"Origin": origin} if origin else {})}
            async with session.options(edge + GET_ME, headers=headers) as response:
                assert response.status == 403
                assert not any(h.startswith("Access-Control-") for h in response.headers)


async def test_with_no_origins_configured_nothing_is_granted(upstream: Upstream) -> None:
    async with serve_edge(EdgeConfig(routes=upstream.routes())) as url:
        # Even the edge's own address: its pages are same-origin and need no grant.
        answer = await call(url, GET_ME, b"", headers={"origin": url})
        assert answer.code is grpc.StatusCode.OK
        assert "Access-Control-Allow-Origin" not in answer.headers
        async with (
            aiohttp.ClientSession() as session,
            session.options(
                url + GET_ME, headers={"Origin": url, "Access-Control-Request-Method": "POST"}
            ) as response,
        ):
            assert response.status == 403
            assert "Access-Control-Allow-Origin" not in response.headers
    with pytest.raises(ValueError, match="never granted"):
        EdgeConfig(routes={}, allow_origins=frozenset({"*"}))


async def _raw(url: str, request: bytes, *more: bytes) -> bytes:
    """Sends ``request`` bytes as they are (then each of ``more`` in a later write) and reads
    until the edge closes the connection."""
    host, _, port = url.removeprefix("http://").rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        for chunk in (request, *more):
            writer.write(chunk)
            await writer.drain()
            # Apart, so that the edge's parser has the headers before the next bytes come.
            await asyncio.sleep(0.1)
        return await asyncio.wait_for(reader.read(), BOUND_S)
    finally:
        writer.close()


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "zstd", "gzip, identity"])
@pytest.mark.parametrize("valid", [True, False], ids=["valid-gzip", "garbage"])
async def test_a_content_encoded_request_is_refused_before_its_body_is_read(
    edge: str, upstream: Upstream, encoding: str, valid: bool
) -> None:
    # aiohttp would inflate valid gzip itself (past the edge's COMPRESSION_NOT_SUPPORTED) and
    # raise out of the body read on bytes that are not gzip.
    body = gzip.compress(framed(b"")) if valid else b"not gzip at all"
    answer = await post(edge, GET_ME, body, headers={"content-encoding": encoding})
    assert answer.status == 200
    assert answer.code is grpc.StatusCode.UNIMPLEMENTED
    assert answer.reason() == "CONTENT_ENCODING_NOT_SUPPORTED"
    assert upstream.calls == []
    # identity is no encoding at all.
    plain = await post(edge, GET_ME, framed(b""), headers={"content-encoding": "identity"})
    assert plain.code is grpc.StatusCode.OK
    assert upstream.calls == [GET_ME]


async def test_a_body_whose_chunks_break_off_ends_at_the_body_deadline(
    upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    # Chunked framing that is not chunked, after the headers: aiohttp's parser stops feeding the
    # body and keeps its 400 until the handler ends, so the read waited for ever.
    head = (
        f"POST {GET_ME} HTTP/1.1\r\nHost: x\r\ncontent-type: application/grpc-web+proto\r\n"
        "transfer-encoding: chunked\r\n\r\n"
    )
    async with serve_edge(EdgeConfig(routes=upstream.routes(), body_timeout_s=0.5)) as url:
        raw = await _raw(url, head.encode(), b"zz\r\nnot a chunk\r\n0\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200"), raw[:200]
    assert b"grpc-status:4\r\n" in raw
    assert upstream.calls == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_body_that_never_comes_ends_at_the_body_deadline(upstream: Upstream) -> None:
    config = EdgeConfig(routes=upstream.routes(), body_timeout_s=0.5)
    async with serve_edge(config) as url:
        head = (
            f"POST {GET_ME} HTTP/1.1\r\nHost: x\r\ncontent-type: application/grpc-web+proto\r\n"
            "content-length: 100\r\n\r\n"
        )
        # Headers, then three bytes of the hundred declared, then nothing.
        raw = await _raw(url, head.encode() + b"\x00\x00\x00")
    assert raw.startswith(b"HTTP/1.1 200"), raw[:200]
    assert b"grpc-status:4\r\n" in raw
    assert b"BODY_TIMEOUT" in base64.b64decode(
        raw.split(b"grpc-status-details-bin:")[1].split(b"\r\n")[0] + b"=="
    )
    assert upstream.calls == []


async def test_headers_never_finished_are_closed_at_the_idle_timeout(upstream: Upstream) -> None:
    async with serve_edge(EdgeConfig(routes=upstream.routes(), idle_timeout_s=0.5)) as url:
        raw = await _raw(url, f"POST {GET_ME} HTTP/1.1\r\nHost: x\r\n".encode())
    assert raw == b""


async def test_a_huge_grpc_timeout_is_clamped_to_a_finite_deadline(
    edge: str, upstream: Upstream
) -> None:
    answer = await call(edge, GET_ME, b"", headers={"grpc-timeout": "99999999H"})
    assert answer.code is grpc.StatusCode.OK
    remaining = upstream.remaining[0]
    # gRPC rounds a deadline up a little on the wire.
    assert remaining is not None and 3600 < remaining <= MAX_TIMEOUT_S * 1.01


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Bad: a\x01b\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-H%d: v\r\n" % i for i in range(200))
        + b"\r\n",
        b"GET /healthz HTTP/1.1\nHost: x\n\n",
        b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Length: 3\r\n\r\n0\r\n\r\n",
        b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGARBAGE\x00\x01 / HTTP/1.1\r\n\r\n",
    ],
    ids=["control-char", "oversized", "too-many", "bare-lf", "te-and-cl", "negative-cl", "junk"],
)
async def test_malformed_http_is_a_400_without_a_traceback_in_the_log(
    edge: str, upstream: Upstream, caplog: pytest.LogCaptureFixture, request_bytes: bytes
) -> None:
    caplog.set_level(logging.DEBUG)
    raw = await _raw(edge, request_bytes)
    assert raw.startswith((b"HTTP/1.0 400", b"HTTP/1.1 400")), raw[:200]
    loud = [r for r in caplog.records if r.levelno >= logging.INFO and r.exc_info]
    assert not loud, [(r.name, r.getMessage()) for r in loud]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("key", ["x-request-id", "x-user-agent"])
async def test_forwarded_headers_are_capped(edge: str, upstream: Upstream, key: str) -> None:
    answer = await call(edge, GET_ME, b"", headers={key: "r" * (MAX_HEADER_CHARS + 1)})
    assert answer.code is grpc.StatusCode.INVALID_ARGUMENT
    assert answer.reason() == "BAD_HEADER"
    assert upstream.calls == []
    assert (await call(edge, GET_ME, b"", headers={key: "r" * MAX_HEADER_CHARS})).code is (
        grpc.StatusCode.OK
    )
    assert upstream.metadata[0][key] == "r" * MAX_HEADER_CHARS


async def test_json_with_a_byte_order_mark_is_refused(edge: str, upstream: Upstream) -> None:
    # json.loads would take either (it sniffs the encoding of bytes); the edge reads UTF-8.
    for body in (b"\xef\xbb\xbf{}", "{}".encode("utf-16")):
        answer = await call(edge, GET_ME, body, json=True)
        assert answer.code is grpc.StatusCode.INVALID_ARGUMENT
        assert answer.reason() == "BAD_JSON"
    assert upstream.calls == []
