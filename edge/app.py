"""gRPC-web to gRPC translation for browsers and mobile web: unary and server-streaming calls."""

from __future__ import annotations

import asyncio
import base64
import logging
import struct
from collections.abc import Mapping
from dataclasses import dataclass

import grpc
from aiohttp import web
from google.protobuf import descriptor_pool

import edge.registry  # noqa: F401 - registers every generated descriptor in the default pool
from edge.pages import add_page_routes

logger = logging.getLogger(__name__)

_GRPC_WEB = "application/grpc-web"
_GRPC_WEB_TEXT = "application/grpc-web-text"
_TRAILER_FLAG = 0x80
# Request headers forwarded to the services as call metadata.
_FORWARDED = ("authorization", "x-request-id", "x-user-agent")
_CORS_HEADERS = "content-type,authorization,x-grpc-web,x-user-agent,grpc-timeout,x-request-id"
_EXPOSED = "grpc-status,grpc-message,grpc-status-details-bin,x-request-id"
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


@dataclass(frozen=True, slots=True)
class EdgeConfig:
    """Where each package's services live and what the edge allows."""

    #: Proto package prefix (``delivery.order.v1``) to backend address.
    routes: Mapping[str, str]
    #: ``Access-Control-Allow-Origin`` value.
    allow_origin: str = "*"
    #: Deadline for unary calls that carry no ``grpc-timeout``, in seconds.
    default_timeout_s: float = 30.0


def _frame(flag: int, payload: bytes) -> bytes:
    return struct.pack(">BI", flag, len(payload)) + payload


def _trailer(code: grpc.StatusCode, message: str, details: bytes | None = None) -> bytes:
    lines = [f"grpc-status:{code.value[0]}", f"grpc-message:{_percent(message)}"]
    if details:
        lines.append("grpc-status-details-bin:" + base64.b64encode(details).decode().rstrip("="))
    return _frame(_TRAILER_FLAG, ("\r\n".join(lines) + "\r\n").encode())


def _percent(text: str) -> str:
    # grpc-message is percent-encoded (the gRPC HTTP/2 spec) so any text survives a header.
    return "".join(c if 0x20 <= ord(c) < 0x7F and c != "%" else f"%{ord(c):02X}" for c in text)


def _parse_timeout(value: str | None) -> float | None:
    if not value or value[-1] not in _TIMEOUT_UNITS:
        return None
    try:
        return int(value[:-1]) * _TIMEOUT_UNITS[value[-1]]
    except ValueError:
        return None


def _first_message(body: bytes) -> bytes:
    if len(body) < 5:
        raise ValueError("the body holds no gRPC-web frame")
    flag, length = struct.unpack(">BI", body[:5])
    if flag & _TRAILER_FLAG or len(body) < 5 + length:
        raise ValueError("the first gRPC-web frame is not a whole message")
    return body[5 : 5 + length]


class Edge:
    """The aiohttp handlers: one route for every gRPC method, CORS preflight, health."""

    def __init__(self, config: EdgeConfig) -> None:
        self._config = config
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

    def _cors(self, response: web.StreamResponse) -> None:
        response.headers["Access-Control-Allow-Origin"] = self._config.allow_origin
        response.headers["Access-Control-Expose-Headers"] = _EXPOSED

    async def preflight(self, request: web.Request) -> web.Response:
        """Answers a CORS preflight for any gRPC-web path."""
        response = web.Response(status=204)
        self._cors(response)
        response.headers["Access-Control-Allow-Methods"] = "POST, OPTIONS"
        response.headers["Access-Control-Allow-Headers"] = _CORS_HEADERS
        response.headers["Access-Control-Max-Age"] = "86400"
        return response

    async def healthz(self, request: web.Request) -> web.Response:
        """Plain HTTP liveness for load balancers that cannot speak gRPC-web."""
        return web.Response(
            text="ok\n" if self.serving else "stopping\n", status=200 if self.serving else 503
        )

    def _backend(self, service: str) -> str | None:
        package = service.rsplit(".", 1)[0]
        return self._config.routes.get(package)

    async def call(self, request: web.Request) -> web.StreamResponse:
        """Translates one gRPC-web call into a gRPC call and streams the answer back."""
        service, method = request.match_info["service"], request.match_info["method"]
        content_type = request.headers.get("content-type", "")
        text = content_type.startswith(_GRPC_WEB_TEXT)
        if not content_type.startswith(_GRPC_WEB):
            return web.Response(status=415, text="expected application/grpc-web[-text]\n")
        response = web.StreamResponse(status=200)
        response.content_type = _GRPC_WEB_TEXT if text else _GRPC_WEB + "+proto"
        self._cors(response)
        await response.prepare(request)

        async def send(chunk: bytes) -> None:
            await response.write(base64.b64encode(chunk) if text else chunk)

        body = await request.read()
        try:
            payload = _first_message(base64.b64decode(body) if text else body)
        except ValueError as exc:
            await send(_trailer(grpc.StatusCode.INVALID_ARGUMENT, str(exc)))
            return response
        if service == "grpc.health.v1.Health" and method == "Check":
            # The edge answers for itself: 1 = SERVING, 2 = NOT_SERVING (HealthCheckResponse).
            await send(_frame(0, bytes([0x08, 1 if self.serving else 2])))
            await send(_trailer(grpc.StatusCode.OK, ""))
            return response
        try:
            descriptor = descriptor_pool.Default().FindMethodByName(f"{service}.{method}")
        except KeyError:
            descriptor = None
        backend = self._backend(service)
        if descriptor is None or backend is None:
            await send(
                _trailer(grpc.StatusCode.UNIMPLEMENTED, f"unknown method {service}/{method}")
            )
            return response
        if descriptor.client_streaming:
            await send(
                _trailer(
                    grpc.StatusCode.UNIMPLEMENTED,
                    "gRPC-web cannot carry client streams; use the unary or server-streaming form",
                )
            )
            return response
        metadata = tuple(
            (key, request.headers[key]) for key in _FORWARDED if key in request.headers
        )
        if request.headers.get("authorization", "").lower().startswith("bearer svc."):
            # Service identities are for the mesh's insides; a browser never carries one.
            await send(
                _trailer(grpc.StatusCode.UNAUTHENTICATED, "service tokens are not accepted here")
            )
            return response
        timeout = _parse_timeout(request.headers.get("grpc-timeout"))
        path = f"/{service}/{method}"
        channel = self._channel(backend)
        try:
            if descriptor.server_streaming:
                call = channel.unary_stream(path)(payload, metadata=metadata, timeout=timeout)
                async for message in call:
                    await send(_frame(0, message))
            else:
                message = await channel.unary_unary(path)(
                    payload, metadata=metadata, timeout=timeout or self._config.default_timeout_s
                )
                await send(_frame(0, message))
        except grpc.aio.AioRpcError as err:
            details = None
            for key, value in err.trailing_metadata() or ():
                if key == "grpc-status-details-bin":
                    details = value if isinstance(value, bytes) else value.encode()
            await send(_trailer(err.code(), err.details() or "", details))
            return response
        except (ConnectionResetError, asyncio.CancelledError):
            # The browser went away; the gRPC call is cancelled with this task.
            raise
        await send(_trailer(grpc.StatusCode.OK, ""))
        return response


def build_app(config: EdgeConfig) -> tuple[web.Application, Edge]:
    """The aiohttp application of the edge and its handler object."""
    edge = Edge(config)
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_get("/healthz", edge.healthz)
    add_page_routes(app)
    app.router.add_route("OPTIONS", "/{service}/{method}", edge.preflight)
    app.router.add_post("/{service}/{method}", edge.call)

    async def _close(_: web.Application) -> None:
        await edge.close()

    app.on_cleanup.append(_close)
    return app, edge
