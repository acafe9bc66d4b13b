"""gRPC-web to gRPC translation for browsers and mobile web: unary and server-streaming calls of
the allow-listed RPCs (edge/exposed.py), in the binary, text and JSON codecs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import grpc
from aiohttp import ClientPayloadError, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2

from edge.exposed import EXPOSED, Exposed
from edge.methods import Method, resolve
from edge.pages import add_page_routes
from edge.wire import (
    BINARY,
    Codec,
    Refused,
    body_limit,
    clean,
    codec_for,
    frame,
    only_message,
    parse_timeout,
    too_large,
    trailer,
    unbase64,
)
from mesh.auth import AUTHORIZATION, bearer_token, is_service_token
from mesh.errors import DomainError, Unauthenticated, to_status_proto

logger = logging.getLogger(__name__)
# aiohttp's server logs here (given as the handler's logger): see _QuietMalformedHttp.
_http_logger = logging.getLogger("edge.http")

#: The longest x-request-id or x-user-agent forwarded, in characters.
MAX_HEADER_CHARS = 200

# Request headers forwarded to the services as call metadata.
_FORWARDED = (AUTHORIZATION, "x-request-id", "x-user-agent")
_CORS_HEADERS = (
    "content-type,authorization,x-grpc-web,x-user-agent,grpc-timeout,x-request-id,"
    "grpc-accept-encoding"
)
_EXPOSED_HEADERS = "grpc-status,grpc-message,grpc-status-details-bin,x-request-id"
# The edge answers health checks for itself: load balancers ask whether it is serving.
_HEALTH = Method(
    exposed=Exposed("grpc.health.v1.Health/Check", "the edge's own health"),
    path="/grpc.health.v1.Health/Check",
    package="grpc.health.v1",
    streaming=False,
    request_class=health_pb2.HealthCheckRequest,
    response_class=health_pb2.HealthCheckResponse,
)


@dataclass(frozen=True, slots=True)
class EdgeConfig:
    """Where each package's services live and what the edge lets through."""

    #: Proto package (``delivery.order.v1``) to backend address.
    routes: Mapping[str, str]
    #: Origins (``https://shop.example``) granted CORS; none by default, as the edge's own
    #: pages are same-origin. Never ``*``.
    allow_origins: frozenset[str] = frozenset()
    #: Deadline for unary calls that carry no ``grpc-timeout``, in seconds.
    default_timeout_s: float = 30.0
    #: Largest request message taken, in bytes; a larger one is RESOURCE_EXHAUSTED.
    max_request_bytes: int = 1024 * 1024
    #: The RPCs browsers may call.
    exposed: tuple[Exposed, ...] = EXPOSED
    #: Time allowed to read a request's body once its headers are in, in seconds; a client
    #: that sends less is answered DEADLINE_EXCEEDED and the connection closed.
    body_timeout_s: float = 10.0
    #: An idle connection, or one whose request headers are not complete, is closed after this
    #: many seconds (aiohttp's keep-alive timer, which also runs from the connection's start).
    idle_timeout_s: float = 75.0

    def __post_init__(self) -> None:
        if "*" in self.allow_origins:
            raise ValueError("list the allowed origins one by one: '*' is never granted")


@dataclass(frozen=True, slots=True)
class _Admitted:
    """A call that passed every check at the edge, ready to forward."""

    method: Method
    backend: str
    payload: bytes
    metadata: tuple[tuple[str, str], ...]
    timeout: float | None


class Edge:
    """The aiohttp handlers: one route for every gRPC method, CORS preflight, health."""

    def __init__(self, config: EdgeConfig) -> None:
        self._config = config
        self._methods = resolve(config.exposed)
        self._channels: dict[str, grpc.aio.Channel] = {}
        self.serving = True

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = grpc.aio.insecure_channel(address)
            self._channels[address] = channel
        return channel

    async def close(self) -> None:
        """Closes the channels to the services."""
        for channel in self._channels.values():
            await channel.close()

    def _granted(self, request: web.Request) -> str | None:
        origin = request.headers.get("origin")
        return origin if origin in self._config.allow_origins else None

    def _cors(self, request: web.Request, response: web.StreamResponse) -> None:
        # Caches must keep answers to different origins apart: the grant depends on it.
        response.headers["Vary"] = "Origin"
        origin = self._granted(request)
        if origin is not None:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = _EXPOSED_HEADERS

    async def preflight(self, request: web.Request) -> web.Response:
        """Answers a CORS preflight: a grant for configured origins only."""
        if self._granted(request) is None:
            return web.Response(
                status=403, text="this origin is not allowed\n", headers={"Vary": "Origin"}
            )
        response = web.Response(status=204)
        self._cors(request, response)
        response.headers["Access-Control-Allow-Methods"] = "POST, OPTIONS"
        response.headers["Access-Control-Allow-Headers"] = _CORS_HEADERS
        response.headers["Access-Control-Max-Age"] = "86400"
        return response

    async def healthz(self, request: web.Request) -> web.Response:
        """Plain HTTP liveness for load balancers that cannot speak gRPC-web."""
        return web.Response(
            text="ok\n" if self.serving else "stopping\n", status=200 if self.serving else 503
        )

    async def call(self, request: web.Request) -> web.StreamResponse:
        """Translates one gRPC-web call into a gRPC call and streams the answer back; anything
        the edge refuses is answered with a gRPC status and never forwarded."""
        try:
            codec = codec_for(request.headers.get("content-type", ""))
        except Refused as refusal:
            return await self._refuse(request, BINARY, refusal)
        try:
            admitted = await self._admit(request, codec)
        except DomainError as refusal:
            return await self._refuse(request, codec, refusal)
        if admitted.method is _HEALTH:
            reply = health_pb2.HealthCheckResponse(
                status=health_pb2.HealthCheckResponse.SERVING
                if self.serving
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            response = await self._start(request, codec)
            await response.write(
                codec.encode(frame(_HEALTH.reply(codec, reply.SerializeToString())))
            )
            await response.write(codec.encode(trailer(grpc.StatusCode.OK, "")))
            return response
        return await self._forward(request, codec, admitted)

    async def _admit(self, request: web.Request, codec: Codec) -> _Admitted:
        """Every check of a call, in the order of cost; raises the refusal to answer."""
        name = f"{request.match_info['service']}/{request.match_info['method']}"
        method = _HEALTH if name == _HEALTH.exposed.method else self._methods.get(name)
        if method is None:
            raise Refused(
                grpc.StatusCode.UNIMPLEMENTED,
                f"{name[:200]} is not served to browsers",
                reason="METHOD_NOT_EXPOSED",
            )
        backend = "" if method is _HEALTH else self._config.routes.get(method.package)
        if backend is None:
            raise Refused(
                grpc.StatusCode.UNIMPLEMENTED,
                f"the edge has no route to the service of {name}",
                reason="NO_ROUTE",
            )
        metadata = _metadata(request)
        _identity_only(request)
        timeout = parse_timeout(request.headers.get("grpc-timeout"))
        if timeout is None and not method.streaming:
            timeout = self._config.default_timeout_s
        body = await self._read_body(request, codec)
        message = only_message(
            unbase64(body) if codec.text else body, self._config.max_request_bytes
        )
        return _Admitted(method, backend, method.request(codec, message), metadata, timeout)

    async def _read_body(self, request: web.Request, codec: Codec) -> bytes:
        # Read here, bounded, rather than by aiohttp's client_max_size, whose 413 no gRPC-web
        # client can read as a status.
        limit = body_limit(self._config.max_request_bytes, codec)
        declared = request.content_length
        if declared is not None and declared > limit:
            raise too_large(self._config.max_request_bytes, f"the body is {declared} bytes")
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self._config.body_timeout_s):
                while chunk := await request.content.readany():
                    size += len(chunk)
                    if size > limit:
                        raise too_large(
                            self._config.max_request_bytes, f"the body exceeds {limit} bytes"
                        )
                    chunks.append(chunk)
        except TimeoutError:
            raise Refused(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"the request body did not arrive within {self._config.body_timeout_s:g} s",
                reason="BODY_TIMEOUT",
            ) from None
        except (RequestPayloadError, ClientPayloadError, HttpProcessingError) as exc:
            # The HTTP framing of the body is broken (bad chunks, a short body): the client's
            # fault, answered as a status rather than aiohttp's 500 and a traceback.
            raise Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the request body could not be read: {clean(str(exc))}",
                reason="BAD_BODY",
            ) from None
        return b"".join(chunks)

    async def _start(self, request: web.Request, codec: Codec) -> web.StreamResponse:
        response = web.StreamResponse(status=200)
        response.content_type = codec.content_type
        self._cors(request, response)
        await response.prepare(request)
        return response

    async def _refuse(
        self, request: web.Request, codec: Codec, refusal: DomainError
    ) -> web.StreamResponse:
        logger.debug("refused %s: %s (%s)", request.path[:200], refusal.reason, refusal.message)
        status = to_status_proto(refusal)
        response = await self._start(request, codec)
        await response.write(
            codec.encode(trailer(refusal.code, refusal.message, status.SerializeToString()))
        )
        if refusal.reason in _CLOSE_AFTER:
            # The rest of the body may never come, or not parse: once the answer is out the
            # connection is closed, rather than read on for aiohttp's lingering time.
            await response.write_eof()
            request.protocol.force_close()
        return response

    async def _forward(
        self, request: web.Request, codec: Codec, admitted: _Admitted
    ) -> web.StreamResponse:
        method = admitted.method
        response = await self._start(request, codec)
        channel = self._channel(admitted.backend)
        if method.streaming:
            call: grpc.aio.Call = channel.unary_stream(method.path)(
                admitted.payload, metadata=admitted.metadata, timeout=admitted.timeout
            )
        else:
            call = channel.unary_unary(method.path)(
                admitted.payload, metadata=admitted.metadata, timeout=admitted.timeout
            )
        try:
            if method.streaming:
                async for message in call:  # type: ignore[attr-defined]
                    await response.write(codec.encode(frame(method.reply(codec, message))))
            else:
                message = await call  # type: ignore[misc]
                await response.write(codec.encode(frame(method.reply(codec, message))))
        except grpc.aio.AioRpcError as err:
            details = None
            for key, value in err.trailing_metadata() or ():
                if key == "grpc-status-details-bin":
                    details = value if isinstance(value, bytes) else value.encode()
            await response.write(codec.encode(trailer(err.code(), err.details() or "", details)))
            return response
        except DecodeError:
            # The service's reply does not parse as its declared type: ours to fix, not the
            # caller's, and the browser is told so rather than left with a cut stream.
            logger.exception("a reply of %s is not a %s", method.path, method.response_class)
            await response.write(
                codec.encode(
                    trailer(grpc.StatusCode.INTERNAL, "the service's reply could not be read")
                )
            )
            return response
        finally:
            # The browser went away (a write failed, or aiohttp cancelled this handler when the
            # connection closed): the service stops working for nobody.
            if not call.done():
                call.cancel()
        await response.write(codec.encode(trailer(grpc.StatusCode.OK, "")))
        return response


# Refusals after which the connection is closed rather than read on.
_CLOSE_AFTER = frozenset({"BODY_TIMEOUT", "BAD_BODY"})


def _identity_only(request: web.Request) -> None:
    """Refuses a content-coded body before it is read: aiohttp would inflate it itself (past
    the edge's own checks), so only ``identity`` is taken."""
    codings = [
        coding.strip().lower()
        for value in request.headers.getall("content-encoding", [])
        for coding in value.split(",")
    ]
    refused = [coding for coding in codings if coding not in ("identity", "")]
    if refused:
        raise Refused(
            grpc.StatusCode.UNIMPLEMENTED,
            f"content-encoding {clean(', '.join(refused))!r} is not accepted: send the body"
            " uncompressed",
            reason="CONTENT_ENCODING_NOT_SUPPORTED",
        )


def _metadata(request: web.Request) -> tuple[tuple[str, str], ...]:
    """The call metadata to forward; a service token is refused however it is written."""
    authorizations = request.headers.getall(AUTHORIZATION, [])
    if len(authorizations) > 1:
        raise Unauthenticated(
            "send one authorization header, not several", reason="MALFORMED_AUTHORIZATION"
        )
    # The services' own parsing, so that no spelling reads as a session here and as a service
    # identity there. Service identities are for the mesh's insides; a browser never has one.
    token = bearer_token(tuple((AUTHORIZATION, value) for value in authorizations))
    if token is not None and is_service_token(token):
        raise Unauthenticated(
            "service tokens are not accepted from browsers", reason="SERVICE_TOKEN_REFUSED"
        )
    metadata = []
    for key in _FORWARDED:
        value = request.headers.get(key)
        if value is None:
            continue
        if not value.isascii() or not value.isprintable():
            raise Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the {key} header must be printable ASCII",
                reason="BAD_HEADER",
            )
        if key != AUTHORIZATION and len(value) > MAX_HEADER_CHARS:
            # They are copied into every log line and call of the mesh.
            raise Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the {key} header is {len(value)} characters; at most {MAX_HEADER_CHARS}",
                reason="BAD_HEADER",
            )
        metadata.append((key, value))
    return tuple(metadata)


class _QuietMalformedHttp(logging.Filter):
    """Turns aiohttp's record of a request it could not parse (a bad header, a bare LF, a
    negative Content-Length, ...) into one DEBUG line without a traceback: any client can send
    those, and each was an ERROR with a traceback. aiohttp still answers them 400."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg = f"{record.msg}: %s"
            record.args = (*(record.args or ()), exc)  # type: ignore[misc]
            record.exc_info = None
            record.exc_text = None
            record.levelno = logging.DEBUG
            record.levelname = "DEBUG"
        return True


_http_logger.addFilter(_QuietMalformedHttp())


def build_app(config: EdgeConfig) -> tuple[web.Application, Edge]:
    """The aiohttp application of the edge and its handler object."""
    edge = Edge(config)
    app = web.Application(
        handler_args={
            # A handler is cancelled when its browser goes away, so an open server stream
            # whose service is silent is cancelled upstream too (aiohttp's default since 3.9
            # is to let it run on).
            "handler_cancellation": True,
            # Bodies are read as sent; a content-coded one is refused (_identity_only).
            "auto_decompress": False,
            "keepalive_timeout": config.idle_timeout_s,
            "logger": _http_logger,
        }
    )
    app.router.add_get("/healthz", edge.healthz)
    add_page_routes(app)
    app.router.add_route("OPTIONS", "/{service}/{method}", edge.preflight)
    app.router.add_post("/{service}/{method}", edge.call)

    async def _close(_: web.Application) -> None:
        await edge.close()

    app.on_cleanup.append(_close)
    return app, edge
