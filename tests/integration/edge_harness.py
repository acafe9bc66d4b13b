"""Edge tests' tools: the edge on a real socket, a raw gRPC-web client, and an upstream gRPC
server that records every call it gets (so a test can show that nothing was forwarded)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import struct
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import aiohttp
import grpc
from aiohttp import web
from google.protobuf import descriptor_pool
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

import edge.registry  # noqa: F401 - the recorder reads method kinds from the default pool
from delivery.tracking.v1 import tracking_service_pb2
from edge.app import EdgeConfig, build_app

#: Every package the edge routes.
PACKAGES = (
    "delivery.order.v1",
    "delivery.location.v1",
    "delivery.matching.v1",
    "delivery.tracking.v1",
)
#: A TrackOrder for this order id makes the recorder's stream send nothing at all.
SILENT = "silent"
#: A unary call whose field 1 is this string gets bytes that are no message as its reply.
GARBAGE = "garbage"


@contextlib.asynccontextmanager
async def serve_edge(config: EdgeConfig) -> AsyncIterator[str]:
    """Runs the edge on a free loopback port; yields its base URL."""
    app, _ = build_app(config)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@dataclass
class Answer:
    """What the edge answered to one raw gRPC-web request."""

    status: int
    headers: Mapping[str, str]
    messages: list[bytes]
    trailers: dict[str, str]

    @property
    def code(self) -> grpc.StatusCode:
        """The call's gRPC status."""
        number = int(self.trailers["grpc-status"])
        return next(code for code in grpc.StatusCode if code.value[0] == number)

    @property
    def message(self) -> str:
        """The grpc-message, percent-decoded."""
        return urllib.parse.unquote(self.trailers.get("grpc-message", ""))

    def status_proto(self) -> status_pb2.Status:
        """The google.rpc.Status of grpc-status-details-bin."""
        raw = self.trailers["grpc-status-details-bin"]
        return status_pb2.Status.FromString(base64.b64decode(raw + "=" * (-len(raw) % 4)))

    def reason(self) -> str:
        """The ErrorInfo reason of the status details."""
        info = error_details_pb2.ErrorInfo()
        for detail in self.status_proto().details:
            if detail.Unpack(info):
                return info.reason
        raise AssertionError("no ErrorInfo")

    def violations(self) -> dict[str, str]:
        """The BadRequest field violations of the status details, field to description."""
        bad = error_details_pb2.BadRequest()
        for detail in self.status_proto().details:
            if detail.Unpack(bad):
                return {v.field: v.description for v in bad.field_violations}
        return {}


def framed(message: bytes, flag: int = 0) -> bytes:
    """One gRPC-web frame."""
    return struct.pack(">BI", flag, len(message)) + message


def parse_frames(body: bytes) -> tuple[list[bytes], dict[str, str]]:
    """The messages and trailers of a binary gRPC-web body."""
    messages, trailers = [], {}
    while body:
        flag, length = struct.unpack(">BI", body[:5])
        chunk, body = body[5 : 5 + length], body[5 + length :]
        if flag & 0x80:
            for line in chunk.decode().split("\r\n"):
                if line:
                    key, _, value = line.partition(":")
                    trailers[key] = value
        else:
            messages.append(chunk)
    return messages, trailers


def unbase64_chunks(raw: bytes) -> bytes:
    """A text body: each written chunk is padded base64 on its own; 4-character groups decode
    alone."""
    return b"".join(base64.b64decode(raw[i : i + 4]) for i in range(0, len(raw), 4))


async def post(
    url: str,
    path: str,
    body: bytes,
    *,
    content_type: str = "application/grpc-web+proto",
    headers: Mapping[str, str] | None = None,
) -> Answer:
    """One gRPC-web request with a raw ``body``; decodes the answer whatever its codec."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            url + path,
            data=body,
            headers={"content-type": content_type, "x-grpc-web": "1", **(headers or {})},
        ) as response,
    ):
        raw = await response.read()
        text = response.headers.get("content-type", "").startswith("application/grpc-web-text")
        messages, trailers = parse_frames(unbase64_chunks(raw) if text else raw)
        return Answer(response.status, response.headers, messages, trailers)


async def call(
    url: str,
    path: str,
    message: bytes,
    *,
    text: bool = False,
    json: bool = False,
    headers: Mapping[str, str] | None = None,
) -> Answer:
    """One well-framed gRPC-web call carrying ``message`` (JSON text when ``json``)."""
    body = framed(message)
    content_type = (
        "application/grpc-web" + ("-text" if text else "") + ("+json" if json else "+proto")
    )
    return await post(
        url,
        path,
        base64.b64encode(body) if text else body,
        content_type=content_type,
        headers=headers,
    )


@dataclass
class Upstream:
    """What the recording server saw: each call's path, metadata and deadline."""

    port: int
    calls: list[str] = field(default_factory=list)
    metadata: list[dict[str, str]] = field(default_factory=list)
    #: Seconds left of each call's deadline when it arrived, None without one.
    remaining: list[float | None] = field(default_factory=list)
    payloads: list[bytes] = field(default_factory=list)
    #: Set when a server stream was cancelled by its caller.
    stream_cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set when a server stream started.
    stream_started: asyncio.Event = field(default_factory=asyncio.Event)

    def routes(self) -> dict[str, str]:
        """Every package routed to this server."""
        return {package: f"127.0.0.1:{self.port}" for package in PACKAGES}


def _first_string(request: bytes) -> str:
    # Field 1 is a string (an order id) in the requests the tests send this way.
    try:
        return tracking_service_pb2.TrackOrderRequest.FromString(request).order_id
    except DecodeError:
        return ""


class _Recorder(grpc.GenericRpcHandler):
    """Answers every method of the contracts with an empty message (a stream: one, then waits
    until cancelled), recording each call first."""

    def __init__(self, upstream: Upstream) -> None:
        self._upstream = upstream

    def _record(self, request: bytes, context: grpc.aio.ServicerContext, path: str) -> None:
        self._upstream.calls.append(path)
        self._upstream.metadata.append({k: v for k, v in context.invocation_metadata() or ()})  # type: ignore[misc]
        self._upstream.remaining.append(context.time_remaining())
        self._upstream.payloads.append(request)

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        path = details.method  # type: ignore[attr-defined]
        service, _, name = path.lstrip("/").partition("/")
        try:
            method = descriptor_pool.Default().FindServiceByName(service).methods_by_name[name]
        except KeyError:
            return None
        upstream = self._upstream

        if method.server_streaming and not method.client_streaming:

            async def stream(
                request: bytes, context: grpc.aio.ServicerContext
            ) -> AsyncIterator[bytes]:
                self._record(request, context, path)
                upstream.stream_started.set()
                try:
                    if _first_string(request) != SILENT:
                        yield b""
                    await asyncio.Event().wait()
                except asyncio.CancelledError:
                    upstream.stream_cancelled.set()
                    raise

            return grpc.unary_stream_rpc_method_handler(stream)  # type: ignore[arg-type]

        async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            self._record(request, context, path)
            return b"\x0a\xff" if _first_string(request) == GARBAGE else b""

        return grpc.unary_unary_rpc_method_handler(unary)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def recording_upstream() -> AsyncIterator[Upstream]:
    """A real gRPC server on a free port that records every call it gets."""
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    upstream = Upstream(port)
    server.add_generic_rpc_handlers([_Recorder(upstream)])
    await server.start()
    try:
        yield upstream
    finally:
        await server.stop(0)
