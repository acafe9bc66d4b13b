"""The one server interceptor: request id, authentication, access log and error mapping."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from typing import Any

import asyncpg
import grpc
import redis.exceptions
from grpc.aio import ServicerContext

from mesh.auth import Principal, SessionStore, bearer_token, set_principal
from mesh.errors import DomainError, Unauthenticated, Unavailable, to_status_proto
from mesh.session_watch import SessionWatch, WatchedStream

logger = logging.getLogger(__name__)

#: Metadata key of the request id (set by clients or the edge, made up here otherwise).
REQUEST_ID = "x-request-id"
_STATUS_DETAILS = "grpc-status-details-bin"

request_id_var: ContextVar[str] = ContextVar("delivery_request_id", default="")

# Codes that mean "the caller asked for something wrong", logged without a traceback.
_CALLER_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.CANCELLED,
}

# A peer's own status passes through when it tells the caller what to do (retry later).
_PASS_THROUGH = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


class LogThrottle:
    """Lets one log line per key through every ``interval_s`` and counts the ones it held.

    An outage of a store fails every call at once: one warning per kind of failure every few
    seconds says so, where a traceback per call would flood the log with one fault.
    """

    def __init__(self, interval_s: float = 10.0) -> None:
        self._interval_s = interval_s
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def admit(self, key: str, now: float) -> int | None:
        """``None`` to hold this line back, else how many were held since the last one."""
        last = self._last.get(key)
        if last is not None and now - last < self._interval_s:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._held.pop(key, 0)


_dependency_log = LogThrottle()

_UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.CannotConnectNowError,
    # PostgreSQL shutting down (pg_ctl stop, a crash) ends the statements it was running.
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.InterfaceError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    ConnectionError,
    OSError,
)


_CONTENTION_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
)


def _metadata_value(metadata: Iterable[tuple[str, Any]] | None, key: str) -> str | None:
    for k, v in metadata or ():
        if k == key:
            return v.decode() if isinstance(v, bytes) else str(v)
    return None


class CallGate:
    """Admits calls until the server starts stopping, and counts the unary calls in flight.

    grpc's own ``stop(grace)`` cancels calls that arrive during the grace period with
    CANCELLED, which clients must not retry; closing the gate first refuses them with
    UNAVAILABLE (retryable, elsewhere) while the calls already admitted finish.
    """

    def __init__(self) -> None:
        self._open = True
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def in_flight(self) -> int:
        """Unary calls admitted and not yet finished."""
        return self._in_flight

    @property
    def is_open(self) -> bool:
        """Whether new calls are admitted."""
        return self._open

    def admit(self, *, unary: bool) -> None:
        """Admits a call, or raises UNAVAILABLE once the gate is closed."""
        if not self._open:
            raise Unavailable(
                "the server is shutting down; retry on another instance",
                reason="SHUTTING_DOWN",
            )
        if unary:
            self._in_flight += 1
            self._idle.clear()

    def leave(self) -> None:
        """Marks an admitted unary call as finished."""
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()

    async def close(self, grace_s: float) -> bool:
        """Refuses new calls and waits up to ``grace_s`` seconds for unary calls to finish."""
        self._open = False
        if self._idle.is_set():
            # Checked first: with no grace, wait_for gives up on even an event already set.
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), grace_s)
        except TimeoutError:
            return False
        return True


class MeshInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every handler of a server.

    Authentication happens before the handler runs: calls to methods outside
    ``public_methods`` need a valid bearer token, and a stream opened with a user's session
    ends with UNAUTHENTICATED when that session is revoked or expires (:attr:`watch`).
    Domain errors become ``google.rpc.Status`` with ``ErrorInfo`` (and ``BadRequest`` for
    bad input); a dependency that is down becomes UNAVAILABLE; anything else is logged with
    its traceback and answered with INTERNAL, never UNKNOWN.
    """

    def __init__(
        self,
        sessions: SessionStore | None,
        public_methods: Iterable[str] = (),
        gate: CallGate | None = None,
        watch: SessionWatch | None = None,
    ) -> None:
        self._sessions = sessions
        self._public = frozenset(public_methods)
        self.gate = gate or CallGate()
        #: Ends the streams of revoked and expired sessions; run as a worker of the server.
        self.watch = watch or (SessionWatch(sessions.redis) if sessions is not None else None)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        metadata = tuple(handler_call_details.invocation_metadata or ())
        public = method.startswith("/grpc.") or method in self._public
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(method, metadata, public, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap_unary(method, metadata, public, handler.stream_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(method, metadata, public, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            self._wrap_stream(method, metadata, public, handler.stream_stream),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    async def _authenticate(
        self, metadata: tuple[tuple[str, Any], ...], public: bool, *, stream: bool = False
    ) -> Principal | None:
        if self._sessions is None:
            return None
        try:
            token = bearer_token(metadata)
            if token is None:
                if public:
                    return None
                raise Unauthenticated(
                    "this call needs a session: send 'authorization: Bearer <token>'",
                    reason="MISSING_CREDENTIALS",
                )
            return await self._sessions.authenticate(token, expiry=stream)
        except Unauthenticated:
            # A stale token must not stop anyone from logging in again.
            if public:
                return None
            raise

    def _begin(self, metadata: tuple[tuple[str, Any], ...]) -> str:
        rid = _metadata_value(metadata, REQUEST_ID) or uuid.uuid4().hex
        request_id_var.set(rid)
        return rid

    def _wrap_unary(
        self,
        method: str,
        metadata: tuple[tuple[str, Any], ...],
        public: bool,
        behavior: Callable[[Any, ServicerContext], Awaitable[Any]],
    ) -> Callable[[Any, ServicerContext], Awaitable[Any]]:
        gated = not method.startswith("/grpc.")

        async def handle(request: Any, context: ServicerContext) -> Any:
            rid = self._begin(metadata)
            started = time.perf_counter()
            principal: Principal | None = None
            admitted = False
            try:
                if gated:
                    self.gate.admit(unary=True)
                    admitted = True
                principal = await self._authenticate(metadata, public)
                set_principal(principal)
                response = await behavior(request, context)
            except BaseException as exc:  # mapped to a status, or re-raised untouched
                await _fail(context, exc, method, rid, principal, started)
                raise
            finally:
                if admitted:
                    self.gate.leave()
            _log_ok(method, rid, principal, started)
            return response

        return handle

    def _wrap_stream(
        self,
        method: str,
        metadata: tuple[tuple[str, Any], ...],
        public: bool,
        behavior: Callable[[Any, ServicerContext], Any],
    ) -> Callable[[Any, ServicerContext], Awaitable[None]]:
        # The reader/writer form for every stream, generator handlers included: the task then
        # only ever waits in the handler or in this wrapper's write, so a session watch may
        # cancel it anywhere and still end the call with a status of ours.
        async def handle(request: Any, context: ServicerContext) -> None:
            rid = self._begin(metadata)
            started = time.perf_counter()
            principal: Principal | None = None
            watched: WatchedStream | None = None
            try:
                try:
                    if not method.startswith("/grpc."):
                        self.gate.admit(unary=False)
                    principal = await self._authenticate(metadata, public, stream=True)
                    set_principal(principal)
                    if self.watch is not None and principal is not None and principal.session_key:
                        task = asyncio.current_task()
                        assert task is not None
                        watched = self.watch.watch(
                            principal.session_key, principal.expires_at_ms, task
                        )
                    result = behavior(request, context)
                    if inspect.isasyncgen(result):
                        # Closed however the stream ends, so the handler's cleanup runs now.
                        async with contextlib.aclosing(result):
                            if watched is not None:
                                async for item in result:
                                    await _first_write(context, item, watched)
                                    break
                            async for item in result:
                                await context.write(item)
                    else:
                        await result
                finally:
                    if watched is not None:
                        watched.release()
                if watched is not None and watched.error is not None:
                    raise watched.error  # the handler swallowed the cancellation
            except BaseException as exc:
                if (
                    watched is not None
                    and watched.error is not None
                    and not isinstance(exc, grpc.aio.AbortError)
                ):
                    # The session ended: our cancellation, not the client's, stopped the handler.
                    if watched.cancelled:
                        watched.cancelled = False
                        asyncio.current_task().uncancel()  # type: ignore[union-attr]
                    await _fail(context, watched.error, method, rid, principal, started)
                    raise watched.error from exc
                await _fail(context, exc, method, rid, principal, started)
                raise
            _log_ok(method, rid, principal, started)

        return handle


async def _first_write(context: ServicerContext, item: Any, watched: WatchedStream) -> None:
    """Writes a watched stream's first message, not to be cancelled halfway: it carries the
    response headers, and a status sent after a cancelled first write would carry them again
    (refused by grpc, which then sends no status at all)."""
    watched.holding = True
    try:
        await context.write(item)
    finally:
        watched.holding = False
    if watched.error is not None:
        raise watched.error


def _who(principal: Principal | None) -> str:
    return f"{principal.role.value}:{principal.subject}" if principal else "-"


def _log_ok(method: str, rid: str, principal: Principal | None, started: float) -> None:
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug(
            "rpc ok",
            extra={
                "method": method,
                "code": "OK",
                "request_id": rid,
                "principal": _who(principal),
                "duration_ms": round((time.perf_counter() - started) * 1000, 3),
            },
        )


async def _fail(
    context: ServicerContext,
    exc: BaseException,
    method: str,
    rid: str,
    principal: Principal | None,
    started: float,
) -> None:
    """Turns ``exc`` into the RPC's status by aborting; returns only for exceptions to re-raise."""
    if isinstance(exc, grpc.aio.AbortError | GeneratorExit):
        return  # The handler aborted on purpose (or the stream was closed); keep its status.
    if not isinstance(exc, Exception):
        return  # Cancellation and interpreter exits propagate untouched.
    if isinstance(exc, DomainError):
        status = to_status_proto(exc)
        code = exc.code
        message = exc.message
    elif isinstance(exc, grpc.aio.AioRpcError) and exc.code() in _PASS_THROUGH:
        code = exc.code()
        message = f"a dependency failed: {exc.details()}"
        status = None
    elif isinstance(exc, NotImplementedError):
        code = grpc.StatusCode.UNIMPLEMENTED
        message = f"{method} is not implemented yet"
        status = None
    elif isinstance(exc, _CONTENTION_ERRORS):
        # Two transactions waited on each other (or serialization failed): one lost, and a
        # retry of the same call will very likely pass.
        code = grpc.StatusCode.ABORTED
        message = "a concurrent change got in the way; retry"
        status = None
    elif isinstance(exc, _UNAVAILABLE_ERRORS):
        code = grpc.StatusCode.UNAVAILABLE
        message = "a storage dependency is unavailable; retry with backoff"
        status = None
    else:
        code = grpc.StatusCode.INTERNAL
        message = f"internal error (request id {rid})"
        status = None
    extra = {
        "method": method,
        "code": code.name,
        "request_id": rid,
        "principal": _who(principal),
        "duration_ms": round((time.perf_counter() - started) * 1000, 3),
    }
    if code in _CALLER_CODES or code is grpc.StatusCode.UNIMPLEMENTED:
        logger.info("rpc refused: %s", message, extra=extra)
    elif code in _PASS_THROUGH:
        # A dependency is down or slow: the fault is elsewhere, and every call says the same.
        cause = f"{type(exc).__module__}.{type(exc).__qualname__}"
        held = _dependency_log.admit(cause, time.monotonic())
        if held is not None:
            logger.warning(
                "rpc failed: %s (%s: %s)%s",
                message,
                cause,
                str(exc)[:200] or "no detail",
                f"; {held} more like it not logged since the last" if held else "",
                extra=extra,
            )
    else:
        logger.error("rpc failed: %s", message, extra=extra, exc_info=exc)
    trailing: tuple[tuple[str, str | bytes], ...] = ((REQUEST_ID, rid),)
    if status is not None:
        trailing = ((_STATUS_DETAILS, status.SerializeToString()), *trailing)
    await context.abort(code, message, trailing_metadata=trailing)
