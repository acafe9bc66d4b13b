"""Build-then-run server bootstrap: health, reflection, interceptors, graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry, Counter

from mesh.auth import SessionStore
from mesh.health_watch import StoreWatch, store_probes
from mesh.interceptors import CallGate, MeshInterceptor
from mesh.logs import configure_logging
from mesh.metrics import MetricsEndpoint, new_registry
from mesh.reflection import enable_reflection
from mesh.settings import ServerSettings, Settings, env_int, split_listen, worker_index
from mesh.stores import Stores, open_stores
from mesh.validation import ValidationInterceptor

logger = logging.getLogger(__name__)

#: The line a service prints on stdout once it serves; ``delivery up`` and tests read it.
READY_PREFIX = "DELIVERY_READY"

#: Seconds before a worker that failed is started again; doubled after each failure in a row,
#: up to :data:`WORKER_RESTART_MAX_S`.
WORKER_RESTART_FIRST_S = 0.5
#: The longest wait before a failed worker is started again.
WORKER_RESTART_MAX_S = 30.0
#: A worker that ran this many seconds before it failed starts over from the first wait.
WORKER_STEADY_S = 60.0


@dataclass(frozen=True, slots=True)
class ServiceBinding:
    """One gRPC service to mount: its full name, servicer and generated ``add_*_to_server``."""

    #: The fully qualified service name, e.g. ``delivery.order.v1.OrderService``.
    name: str
    #: The servicer instance.
    servicer: Any
    #: The generated registration function.
    add_to_server: Callable[[Any, grpc.aio.Server], None]


@dataclass(eq=False)
class _Worker:
    """A background coroutine of the server, started again whenever it fails."""

    #: Its name in logs and in the ``worker`` label of ``delivery_worker_failures_total``.
    name: str
    run: Callable[[], Coroutine[Any, Any, None]]
    stop: Callable[[], None]
    #: Set once the server asks the worker to end: no restart after that.
    ending: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


def _worker_name(run: Callable[..., object]) -> str:
    """``EventConsumer.run`` for a bound method, ``build_server.prepare`` for a local function."""
    owner = getattr(run, "__self__", None)
    if owner is not None:
        return f"{type(owner).__name__}.{getattr(run, '__name__', 'run')}"
    return str(getattr(run, "__qualname__", repr(run))).replace("<locals>.", "")


@dataclass
class MeshServer:
    """A started-or-startable gRPC server with its health service and background tasks."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    service_names: tuple[str, ...]
    settings: ServerSettings
    #: Refuses new calls with UNAVAILABLE while in-flight ones drain; None without the interceptor.
    gate: CallGate | None = None
    #: Coroutines to await after the server stops (closing streams, flushing buffers).
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    _workers: list[_Worker] = field(default_factory=list)
    _stopping: bool = False
    #: What the service reports to Prometheus (served when ``settings.metrics_listen`` is set).
    metrics: CollectorRegistry = field(default_factory=new_registry)
    #: The HTTP endpoint of :attr:`metrics`, once started.
    metrics_endpoint: MetricsEndpoint | None = None
    #: Checks the stores; health follows it while the server serves (see :meth:`watch_stores`).
    store_watch: StoreWatch | None = None
    _store_worker: _Worker | None = None
    #: Failures of background workers, by worker (``delivery_worker_failures_total``).
    worker_failures: Counter = field(init=False)

    def __post_init__(self) -> None:
        self.worker_failures = Counter(
            "delivery_worker_failures_total",
            "Background workers that ended with an unexpected error (each one is started again)",
            ["worker"],
            registry=self.metrics,
        )

    def add_worker(
        self,
        run: Callable[[], Coroutine[Any, Any, None]],
        stop: Callable[[], None],
        *,
        name: str | None = None,
    ) -> None:
        """Runs ``run()`` beside the server; ``stop()`` ends it once the server has stopped.

        A ``run()`` that raises is logged with its traceback, counted and called again after
        a wait that grows with each failure in a row; one that returns is done.
        """
        name = name or _worker_name(run)
        taken = {w.name for w in self._workers}
        if name in taken:
            name = next(
                f"{name}#{n}" for n in range(2, len(taken) + 3) if f"{name}#{n}" not in taken
            )
        self._workers.append(_Worker(name, run, stop))

    def watch_stores(self, watch: StoreWatch) -> None:
        """Health follows ``watch`` from :meth:`start` on: NOT_SERVING for the server and each
        service while a store is unreachable, SERVING again once it answers; :meth:`stop`
        ends the watch before it turns health NOT_SERVING for good."""
        self.store_watch = watch

    async def start(self) -> None:
        """Starts serving and its workers, and reports SERVING for the server and each service."""
        await self.server.start()
        if self.settings.metrics_listen:
            self.metrics_endpoint = MetricsEndpoint(self.metrics, *self._metrics_address())
        for worker in self._workers:
            worker.task = asyncio.create_task(self._supervise(worker), name=worker.name)
        await self._set_all(health_pb2.HealthCheckResponse.SERVING)
        if self.store_watch is not None:
            watch = self.store_watch

            async def run_watch() -> None:
                await watch.run(self._stores_changed)

            self._store_worker = _Worker("StoreWatch.run", run_watch, watch.stop)
            self._store_worker.task = asyncio.create_task(
                self._supervise(self._store_worker), name="StoreWatch.run"
            )

    async def _supervise(self, worker: _Worker) -> None:
        """Runs ``worker`` until it returns or the server ends it; starts it again if it fails."""
        loop = asyncio.get_running_loop()
        delay = WORKER_RESTART_FIRST_S
        while True:
            started = loop.time()
            try:
                await worker.run()
                return
            except Exception:
                if worker.ending.is_set():
                    logger.exception("worker %s failed while stopping", worker.name)
                    return
                self.worker_failures.labels(worker=worker.name).inc()
                if loop.time() - started >= WORKER_STEADY_S:
                    delay = WORKER_RESTART_FIRST_S
                logger.exception(
                    "worker %s failed; starting it again in %.1fs",
                    worker.name,
                    delay,
                    extra={"worker": worker.name},
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(worker.ending.wait(), delay)
            if worker.ending.is_set():
                return
            delay = min(delay * 2, WORKER_RESTART_MAX_S)

    async def _stores_changed(self, healthy: bool) -> None:
        if self._stopping:
            return
        if healthy:
            logger.info("the stores answer again: health SERVING")
            await self._set_all(health_pb2.HealthCheckResponse.SERVING)
        else:
            down = ", ".join(sorted(self.store_watch.down)) if self.store_watch else "a store"
            logger.error("%s unreachable: health NOT_SERVING until it answers", down)
            await self._set_all(health_pb2.HealthCheckResponse.NOT_SERVING)

    async def stop(self, grace: float | None = None) -> None:
        """Graceful stop: NOT_SERVING first, then refuse new calls and let in-flight ones end."""
        if self._stopping:
            return
        self._stopping = True
        if self._store_worker is not None and self._store_worker.task is not None:
            # Ended before health turns NOT_SERVING, so it can never turn it back.
            self._store_worker.ending.set()
            self._store_worker.stop()
            self._store_worker.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._store_worker.task
        await self._set_all(health_pb2.HealthCheckResponse.NOT_SERVING)
        # Any later set() is ignored: NOT_SERVING for good.
        await self.health.enter_graceful_shutdown()
        if self.settings.drain_delay_s > 0:
            await asyncio.sleep(self.settings.drain_delay_s)
        grace = self.settings.grace_s if grace is None else grace
        deadline = asyncio.get_running_loop().time() + grace
        if self.gate is not None:
            logger.info("refusing new calls; %d unary calls in flight", self.gate.in_flight)
            if not await self.gate.close(grace):
                logger.warning("%d unary calls outlived the grace period", self.gate.in_flight)
        # Streams still open get what is left of the grace period, then see cancellation.
        remaining = max(0.0, deadline - asyncio.get_running_loop().time())
        await self.server.stop(remaining)
        # Workers finish what they hold (a relay marks the batch it published), then end.
        for worker in self._workers:
            worker.ending.set()
            worker.stop()
            if worker.task is None:
                continue
            try:
                await asyncio.wait_for(worker.task, timeout=max(remaining, 5.0))
            except TimeoutError:
                logger.warning("worker %s did not stop in time; cancelled", worker.name)
            except Exception:
                logger.exception("worker %s failed", worker.name)
        for hook in self.on_stop:
            try:
                await hook()
            except Exception:
                logger.exception("a stop hook failed")
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.close()

    def _metrics_address(self) -> tuple[str, int]:
        """The metrics address; worker N of several sharing a port serves on its port + N."""
        host, port = split_listen(self.settings.metrics_listen)
        return host, port + (worker_index() or 0) if port else 0

    async def _set_all(self, status: int) -> None:
        await self.health.set("", status)
        for name in self.service_names:
            await self.health.set(name, status)

    async def wait_for_termination(self) -> None:
        """Returns when the server has stopped."""
        await self.server.wait_for_termination()


def build_grpc_server(
    settings: ServerSettings,
    bindings: Sequence[ServiceBinding],
    interceptors: Iterable[grpc.aio.ServerInterceptor] = (),
    gate: CallGate | None = None,
) -> MeshServer:
    """Creates the server, mounts ``bindings`` plus health and reflection, and binds the port.

    The server is not started; ``settings.listen`` may name port 0, and the bound port is
    returned in the :class:`MeshServer`.
    """
    server = grpc.aio.server(
        interceptors=list(interceptors),
        options=settings.server_options(),
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for binding in bindings:
        binding.add_to_server(binding.servicer, server)
    names = tuple(b.name for b in bindings)
    # v1 and v1alpha, with the contracts' comments (see mesh/reflection.py).
    enable_reflection(names, server)
    port = server.add_insecure_port(settings.listen)
    if port == 0:
        raise RuntimeError(f"could not bind {settings.listen}")
    return MeshServer(
        server=server,
        port=port,
        health=health_servicer,
        service_names=names,
        settings=settings,
        gate=gate,
    )


#: Allocations (net of frees) between the collector's young collections in a serving process
#: (``DELIVERY_GC_THRESHOLD``; 0 keeps CPython's 700).
DEFAULT_GC_THRESHOLD = 50_000


def announce(service: str, port: int, **extra: object) -> None:
    """Prints the ready line (``DELIVERY_READY service=order port=50051``) and flushes."""
    fields = " ".join(f"{k}={v}" for k, v in {"service": service, "port": port, **extra}.items())
    sys.stdout.write(f"{READY_PREFIX} {fields}\n")
    sys.stdout.flush()


async def serve_until_signal(server: MeshServer, service: str) -> None:
    """Starts ``server``, announces it, and stops it gracefully on SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_requested.set)
    # What was built so far (modules, caches, the server) lives as long as the process: out
    # of the collector's sight, so full collections under load walk only what load allocates.
    gc.collect()
    gc.freeze()
    # A full collection still walks everything load keeps alive (thousands of open streams:
    # 50-150 ms here, often enough to set p99). Young collections every N allocations rather
    # than CPython's 700 make full ones that much rarer; a young one stays short.
    threshold = env_int(os.environ, "GC_THRESHOLD", DEFAULT_GC_THRESHOLD)
    if threshold > 0:
        _, middle, old = gc.get_threshold()
        gc.set_threshold(threshold, middle, old)
    await server.start()
    logger.info("%s serving on port %d", service, server.port)
    announce(service, server.port)
    waiter = asyncio.create_task(server.wait_for_termination())
    signalled = asyncio.create_task(stop_requested.wait())
    done, _ = await asyncio.wait({waiter, signalled}, return_when=asyncio.FIRST_COMPLETED)
    if signalled in done:
        logger.info(
            "%s stopping: draining in-flight calls for up to %.1fs",
            service,
            server.settings.grace_s,
        )
        await server.stop()
    for task in (waiter, signalled):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
    logger.info("%s stopped", service)


async def run_service(
    settings: Settings,
    build: Callable[[Settings, Stores], Awaitable[MeshServer]],
    *,
    postgres: bool = True,
    redis: bool = True,
) -> None:
    """The whole life of one service process: logging, stores, build, serve, stop, close."""
    configure_logging(settings.service, settings.log_level, settings.log_format)
    async with open_stores(settings.stores, postgres=postgres, redis=redis) as stores:
        server = await build(settings, stores)
        await serve_until_signal(server, settings.service)


def build_mesh_server(
    settings: Settings,
    stores: Stores,
    bindings: Sequence[ServiceBinding],
    *,
    public_methods: Iterable[str] = (),
) -> MeshServer:
    """A server with the mesh's interceptor: sessions from ``stores.redis``, error mapping."""
    sessions = (
        SessionStore(
            stores.redis,
            ttl_s=settings.auth.session_ttl_s,
            service_secret=settings.auth.service_secret,
        )
        if stores.redis is not None
        else None
    )
    interceptor = MeshInterceptor(sessions, public_methods)
    server = build_grpc_server(
        settings.server, bindings, [interceptor, ValidationInterceptor()], interceptor.gate
    )
    if interceptor.watch is not None:
        server.add_worker(interceptor.watch.run, interceptor.watch.stop)
    probes = store_probes(stores, settings.stores.probe_timeout_s)
    if probes:
        server.watch_stores(
            StoreWatch(
                probes,
                every_s=settings.stores.probe_every_s,
                timeout_s=settings.stores.probe_timeout_s,
            )
        )
    return server


def consumer_name() -> str:
    """A name for this process in Redis consumer groups that survives a restart on the same
    host (``DELIVERY_INSTANCE`` overrides it, e.g. with a pod name); each of a service's worker
    processes (see :mod:`mesh.workers`) gets its own."""
    name = os.environ.get("DELIVERY_INSTANCE") or socket.gethostname()
    worker = worker_index()
    return f"{name}-w{worker}" if worker is not None else name


#: A process started with this variable set to its parent's pid dies with that parent (see
#: :func:`die_with_parent`); ``delivery up``, the tests' ``spawn`` and the worker supervisor set it.
PARENT_PID_ENV = "DELIVERY_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Has the kernel send SIGTERM when the parent named by ``DELIVERY_PARENT_PID`` dies.

    So a killed ``delivery up``, test run or worker supervisor leaves no service holding a port
    or consuming a stream. Linux only; elsewhere (and without the variable) nothing happens.
    """
    parent = os.environ.get(PARENT_PID_ENV)
    if not parent or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(parent):
        # The parent was gone before the request took effect.
        os.kill(os.getpid(), signal.SIGTERM)


def run_main(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Runs a service's ``main()`` to completion, on uvloop when it is installed."""
    die_with_parent()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional
        asyncio.run(main())
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
