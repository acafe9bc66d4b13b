"""Several processes serving one service on one port: a supervisor and its workers.

CPython runs one thread of Python at a time, so a service whose hot path is CPU-bound in Python
(location_svc's GPS ingest) uses more than one core only with more processes. With
``DELIVERY_<SERVICE>_WORKERS=N`` (N > 1) ``python -m <service>`` becomes a supervisor: it
reserves the port, starts N copies of the service that each bind it with SO_REUSEPORT (the
kernel spreads new connections among them), and prints the service's ready line once every
worker is ready. SIGTERM or SIGINT is passed on to every worker, each of which drains as a lone
process does; a worker that dies on its own is started again; and the workers die with the
supervisor if it is killed (Linux's parent-death signal), so nothing is left holding the port.

Only a service whose state lives in PostgreSQL and Redis may run this way (location_svc does:
its per-process caches are refreshed from Redis, and each worker has its own consumer name).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from mesh.logs import configure_logging
from mesh.server import PARENT_PID_ENV, READY_PREFIX, announce, die_with_parent, run_main
from mesh.settings import WORKER_INDEX_ENV, Settings, split_listen, worker_index

logger = logging.getLogger(__name__)

#: Seconds between restarts of a worker that keeps dying.
RESTART_DELAY_S = 1.0


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound (not listening) to ``host:port`` with SO_REUSEPORT, holding the port.

    Port 0 picks a free port that the workers then share. A port taken by a process that did
    not ask for SO_REUSEPORT fails here, before any worker starts.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


class Supervisor:
    """Runs ``python -m <module>`` ``workers`` times on one port until signalled."""

    def __init__(self, settings: Settings, module: str) -> None:
        self._settings = settings
        self._module = module
        self._workers = settings.server.workers
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self._ready: set[int] = set()
        self._all_ready = asyncio.Event()
        self._stopping = False

    async def run(self) -> int:
        """Supervises until SIGTERM/SIGINT; returns the exit status (0 when all stopped well)."""
        service = self._settings.service
        host, port = split_listen(self._settings.server.listen)
        reservation = reserve_port(host, port)
        port = reservation.getsockname()[1]
        bound = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        env = {
            **os.environ,
            f"DELIVERY_{service.upper()}_LISTEN": bound,
            PARENT_PID_ENV: str(os.getpid()),
        }
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        tasks = [asyncio.create_task(self._keep(i, env)) for i in range(self._workers)]
        try:
            ready = asyncio.create_task(self._all_ready.wait())
            stopped = asyncio.create_task(stop.wait())
            first = await asyncio.wait(
                {ready, stopped, *tasks}, return_when=asyncio.FIRST_COMPLETED
            )
            if ready in first[0]:
                announce(service, port, workers=self._workers)
                logger.info("%s serving on port %d with %d workers", service, port, self._workers)
                await asyncio.wait({stopped, *tasks}, return_when=asyncio.FIRST_COMPLETED)
            else:
                logger.error("%s: a worker exited before every worker was ready", service)
            ready.cancel()
            stopped.cancel()
            return await self._stop(tasks)
        finally:
            reservation.close()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    async def _stop(self, tasks: list[asyncio.Task[int]]) -> int:
        self._stopping = True
        for proc in self._procs.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        codes = await asyncio.gather(*tasks)
        # A worker still starting when SIGTERM came ends by the signal itself: a clean stop too.
        return 0 if all(c in (0, -signal.SIGTERM) for c in codes) else 1

    async def _keep(self, index: int, env: dict[str, str]) -> int:
        """Runs worker ``index``, starting it again if it dies while the service is up."""
        while True:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                self._module,
                env={**env, WORKER_INDEX_ENV: str(index)},
                stdout=asyncio.subprocess.PIPE,
            )
            self._procs[index] = proc
            if self._stopping:
                # The stop began while this worker was being started: it missed the signal.
                proc.send_signal(signal.SIGTERM)
            assert proc.stdout is not None
            async for line in proc.stdout:
                if line.startswith(READY_PREFIX.encode()):
                    # Only the supervisor announces the service, once all workers are up.
                    self._ready.add(index)
                    if len(self._ready) == self._workers:
                        self._all_ready.set()
                    continue
                sys.stdout.buffer.write(line)
                sys.stdout.flush()
            code = await proc.wait()
            if self._stopping or not self._all_ready.is_set():
                # Stopping, or a worker that cannot start (bad settings): no restart loop.
                return code
            logger.error("worker %d exited with status %s; starting it again", index, code)
            self._ready.discard(index)
            await asyncio.sleep(RESTART_DELAY_S)
            if self._stopping:
                return 0


def run_supervisor(settings: Settings, module: str) -> int:
    """Runs a :class:`Supervisor` for ``settings.service``; returns its exit status."""
    configure_logging(f"{settings.service}-supervisor", settings.log_level, settings.log_format)
    return asyncio.run(Supervisor(settings, module).run())


#: The services whose state allows several processes (see the module docstring).
MULTI_PROCESS = frozenset({"location"})


def serve(service: str, module: str, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """``python -m <module>``: one process, or a supervisor when workers are configured."""
    settings = Settings.from_env(service)
    if settings.server.workers > 1 and worker_index() is None:
        if service not in MULTI_PROCESS:
            raise SystemExit(
                f"{service} runs as one process; unset DELIVERY_{service.upper()}_WORKERS"
            )
        die_with_parent()
        raise SystemExit(run_supervisor(settings, module))
    run_main(main)
