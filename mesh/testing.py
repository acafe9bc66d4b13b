"""Test helpers: real servers on port 0, real channels, service processes with ready lines."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc

from mesh.auth import service_token
from mesh.server import PARENT_PID_ENV, READY_PREFIX, MeshServer
from mesh.settings import ServerSettings, Settings, StoreSettings
from mesh.stores import Stores

#: The service secret of servers built by :func:`settings_for_test`.
TEST_SERVICE_SECRET = secrets.token_hex(16)


def settings_for_test(service: str, stores: StoreSettings, **server: Any) -> Settings:
    """Settings for a server under test: loopback, port 0, short grace."""
    base = Settings.from_env(service, env={})
    server_settings = replace(ServerSettings(listen="127.0.0.1:0", grace_s=2.0), **server)
    auth = replace(base.auth, service_secret=TEST_SERVICE_SECRET)
    return replace(base, server=server_settings, stores=stores, auth=auth)


@contextlib.asynccontextmanager
async def serving(
    build: Callable[[Settings, Stores], Awaitable[MeshServer]],
    settings: Settings,
    stores: Stores,
) -> AsyncIterator[tuple[MeshServer, grpc.aio.Channel]]:
    """Builds and starts a server in this process, yields it with a channel to it, stops it."""
    server = await build(settings, stores)
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        yield server, channel
    finally:
        await channel.close()
        await server.stop(0)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata that authenticates with ``token``."""
    return (("authorization", f"Bearer {token}"),)


def service_metadata(settings: Settings, service: str = "matching") -> tuple[tuple[str, str], ...]:
    """Call metadata that authenticates as service ``service``."""
    return bearer(service_token(settings.auth.service_secret, service))


async def spawn(
    args: list[str],
    env: Mapping[str, str],
    *,
    inherit_env: bool = True,
    ready_timeout: float = 60.0,
    stderr_path: Path | None = None,
) -> tuple[asyncio.subprocess.Process, dict[str, int]]:
    """Starts a process and waits until it has printed a ready line for each of its services.

    Returns the process and ``{service: port}``; a process that runs several services (``delivery
    up``) is done when it prints the mesh-is-up banner, which follows every ready line. Its
    stderr (the logs) goes to ``stderr_path`` when given, else to this process's.
    """
    errors = None if stderr_path is None else stderr_path.open("ab")
    process = await asyncio.create_subprocess_exec(
        *args,
        # The service dies with this process, however this process ends.
        env={**(os.environ if inherit_env else {}), **env, PARENT_PID_ENV: str(os.getpid())},
        stdout=asyncio.subprocess.PIPE,
        stderr=errors,
        start_new_session=True,
    )
    if errors is not None:
        errors.close()  # the child holds its own descriptor
    ports: dict[str, int] = {}
    single = args[:2] == [sys.executable, "-m"]

    async def read() -> None:
        assert process.stdout is not None
        async for raw in process.stdout:
            line = raw.decode(errors="replace")
            if READY_PREFIX in line:
                fields = dict(part.split("=", 1) for part in line.split(READY_PREFIX, 1)[1].split())
                ports[fields["service"]] = int(fields["port"])
                if single:
                    return
            if "the delivery mesh is up" in line:
                return
        raise RuntimeError(f"process exited before it was ready: {args}")

    try:
        await asyncio.wait_for(read(), ready_timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise
    # Keep reading so a chatty child never blocks on a full pipe.
    drain = asyncio.create_task(_drain(process))
    _drains.add(drain)
    drain.add_done_callback(_drains.discard)
    return process, ports


_drains: set[asyncio.Task[None]] = set()


async def _drain(process: asyncio.subprocess.Process) -> None:
    assert process.stdout is not None
    while await process.stdout.read(65536):
        pass
