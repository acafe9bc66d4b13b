"""`delivery up` as a supervisor: a service that dies is started again, the others keep serving."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mesh.cli import SERVICES, masked_url
from mesh.server import PARENT_PID_ENV, READY_PREFIX
from mesh.settings import StoreSettings

DELIVERY = str(Path(sys.executable).parent / "delivery")


@dataclass
class Up:
    """A running ``delivery up`` whose stdout and stderr lines are kept for the test to read."""

    process: asyncio.subprocess.Process
    ports: dict[str, int] = field(default_factory=dict)
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    readers: list[asyncio.Task[None]] = field(default_factory=list)

    async def read(self, stream: asyncio.StreamReader, lines: list[str]) -> None:
        async for raw in stream:
            line = raw.decode(errors="replace").rstrip("\n")
            if READY_PREFIX in line:
                fields = dict(p.split("=", 1) for p in line.split(READY_PREFIX, 1)[1].split())
                self.ports.setdefault(fields["service"], int(fields["port"]))
            async with self.changed:
                lines.append(line)
                self.changed.notify_all()
        async with self.changed:
            self.changed.notify_all()

    async def wait_line(self, pattern: str, lines: list[str]) -> str:
        """The first line of ``lines`` matching ``pattern``, waiting (up to 2 min) if need be."""

        def found() -> str | None:
            return next((line for line in lines if re.search(pattern, line)), None)

        async def wait() -> str:
            async with self.changed:
                while (line := found()) is None:
                    if self.process.returncode is not None and all(r.done() for r in self.readers):
                        raise AssertionError(f"delivery up exited without printing {pattern!r}")
                    await self.changed.wait()
                return line

        return await asyncio.wait_for(wait(), 120)


@contextlib.asynccontextmanager
async def delivery_up(env: Mapping[str, str], *args: str) -> AsyncIterator[Up]:
    """Runs ``delivery up --base-port 0`` until it is up; SIGKILLs whatever is left at the end."""
    process = await asyncio.create_subprocess_exec(
        DELIVERY,
        "up",
        "--base-port",
        "0",
        *args,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **env, PARENT_PID_ENV: str(os.getpid())},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    up = Up(process)
    assert process.stdout and process.stderr
    up.readers = [
        asyncio.create_task(up.read(process.stdout, up.stdout)),
        asyncio.create_task(up.read(process.stderr, up.stderr)),
    ]
    try:
        yield up
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        await process.wait()
        await asyncio.wait(up.readers, timeout=30)


def store_env(store_settings: StoreSettings) -> dict[str, str]:
    """The environment that points ``delivery up`` at the test database and Redis."""
    return {
        "DELIVERY_DATABASE_URL": store_settings.database_url,
        "DELIVERY_REDIS_URL": store_settings.redis_url,
    }


def service_pids(parent: int) -> dict[str, int]:
    """``{service: pid}`` of the service processes whose parent is ``parent``, from /proc."""
    modules = {module: name for name, module in SERVICES.items()}
    found: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid != parent or b"-m" not in argv:
            continue
        module = argv[argv.index(b"-m") + 1].decode()
        if module in modules:
            found[modules[module]] = int(entry.name)
    return found


async def health_status(port: int, deadline_s: float = 30) -> int:
    """The overall health status of the server on ``port`` (UNKNOWN when it does not answer)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=deadline_s
            )
        except grpc.aio.AioRpcError:
            return health_pb2.HealthCheckResponse.UNKNOWN
        return int(reply.status)


async def until_serving(port: int) -> None:
    """Returns once the server on ``port`` answers SERVING (trying for up to about 2 min)."""
    for _ in range(1200):
        if await health_status(port, deadline_s=5) == health_pb2.HealthCheckResponse.SERVING:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"port {port} never answered SERVING")


async def until_new_pid(parent: int, service: str, old: int) -> int:
    """The pid of ``service`` under ``parent`` once it is another process than ``old``."""
    for _ in range(6000):
        pid = service_pids(parent).get(service)
        if pid not in (None, old):
            assert pid is not None
            return pid
        await asyncio.sleep(0.02)
    raise AssertionError(f"{service} was not started again")


async def watch_health(ports: dict[str, int], seen: list[tuple[str, int]]) -> None:
    """Checks each service's health over and over, noting every answer."""
    while True:
        for name, port in ports.items():
            if name != "edge":
                seen.append((name, await health_status(port)))
        await asyncio.sleep(0.1)


@pytest.mark.slow
async def test_a_killed_service_is_restarted_on_its_address_and_the_others_keep_serving(
    store_settings: StoreSettings,
) -> None:
    async with delivery_up(store_env(store_settings)) as up:
        await up.wait_line("the delivery mesh is up", up.stdout)
        before = service_pids(up.process.pid)
        assert set(before) == set(SERVICES)
        others = {name: port for name, port in up.ports.items() if name != "order"}
        seen: list[tuple[str, int]] = []
        watcher = asyncio.create_task(watch_health(others, seen))
        try:
            for _ in range(1200):
                if len(seen) >= len(others) - 1:
                    break
                await asyncio.sleep(0.1)
            os.kill(before["order"], signal.SIGKILL)
            line = await up.wait_line(r"order exited", up.stderr)
            assert re.search(r"order exited \(signal 9 SIGKILL\); restart 1 in 0\.5 s", line)
            new_pid = await until_new_pid(up.process.pid, "order", before["order"])
            # It serves again, on the same port.
            await until_serving(up.ports["order"])
            # Two more rounds of checks of the others after the restart.
            checked = len(seen)
            for _ in range(1200):
                if len(seen) >= checked + 2 * len(others):
                    break
                await asyncio.sleep(0.1)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        # The others never stopped: the same processes, SERVING throughout.
        after = service_pids(up.process.pid)
        assert after == {**before, "order": new_pid}
        assert seen and all(status == health_pb2.HealthCheckResponse.SERVING for _, status in seen)
        assert up.process.returncode is None
        up.process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(up.process.wait(), 120) == 0


@pytest.mark.slow
async def test_a_service_that_keeps_dying_stops_the_mesh_with_one_message(
    store_settings: StoreSettings,
) -> None:
    async with delivery_up(store_env(store_settings)) as up:
        await up.wait_line("the delivery mesh is up", up.stdout)
        pid = service_pids(up.process.pid)["matching"]
        for death in range(1, 6):
            os.kill(pid, signal.SIGKILL)
            if death < 5:
                await up.wait_line(rf"matching exited .*; restart {death} in", up.stderr)
                pid = await until_new_pid(up.process.pid, "matching", pid)
        code = await asyncio.wait_for(up.process.wait(), 120)
        await asyncio.wait(up.readers, timeout=30)
    assert code != 0
    assert [line for line in up.stderr if "died 5 times" in line] == [
        "matching died 5 times within 60 s (last: signal 9 SIGKILL); stopping the mesh"
    ]
    assert "the delivery mesh stopped" in up.stdout


def test_masked_url_hides_passwords_only() -> None:
    assert masked_url("postgresql://app:s3cret@db:5432/delivery") == (
        "postgresql://app:***@db:5432/delivery"
    )
    assert masked_url("redis://:s3cret@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert masked_url("postgresql://db/delivery?user=app&password=s3cret&sslmode=require") == (
        "postgresql://db/delivery?user=app&password=***&sslmode=require"
    )
    # The embedded server's URL has an empty password and nothing to hide.
    embedded = "postgresql://postgres:@/delivery?host=/tmp/pg"
    assert masked_url(embedded) == embedded


@pytest.mark.slow
async def test_a_taken_port_is_one_line_naming_it_before_anything_starts(
    store_settings: StoreSettings,
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        process = await asyncio.create_subprocess_exec(
            DELIVERY,
            "up",
            "--base-port",
            str(port),
            env={**os.environ, **store_env(store_settings), PARENT_PID_ENV: str(os.getpid())},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 1
    lines = err.decode().splitlines()
    assert len(lines) == 1, lines
    assert f"port {port} (order)" in lines[0]
    assert "--base-port 0" in lines[0]
    # Nothing was started: not even the migrations.
    assert out == b""


@pytest.mark.slow
async def test_a_service_that_cannot_bind_on_restart_is_one_line_and_the_password_is_masked(
    store_settings: StoreSettings,
) -> None:
    # The test server trusts local connections: any password is accepted, and must not show.
    parsed = urllib.parse.urlsplit(store_settings.database_url)
    secret = "pw-" + os.urandom(6).hex()
    host = parsed.netloc.rpartition("@")[2]
    user = parsed.username or "postgres"
    url = urllib.parse.urlunsplit(parsed._replace(netloc=f"{user}:{secret}@{host}"))
    env = {**store_env(store_settings), "DELIVERY_DATABASE_URL": url}
    async with delivery_up(env) as up:
        await up.wait_line("the delivery mesh is up", up.stdout)
        pid = service_pids(up.process.pid)["order"]
        port = up.ports["order"]
        with socket.socket() as holder:
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            os.kill(pid, signal.SIGKILL)
            # Take the port while order waits to be started again.
            for _ in range(1000):
                try:
                    holder.bind(("127.0.0.1", port))
                    break
                except OSError:
                    await asyncio.sleep(0.005)
            holder.listen()
            line = await up.wait_line(r"order exited \(status \d+, port \d+ taken\)", up.stderr)
            assert f"port {port} taken); restart 2 in" in line
        # Freed, the port is order's again.
        await until_serving(port)
        up.process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(up.process.wait(), 120) == 0
        await asyncio.wait(up.readers, timeout=30)
    output = "\n".join(up.stdout + up.stderr)
    assert "Traceback" not in output
    assert "Failed to bind" not in output
    assert secret not in output
    assert f"{user}:***@" in output


@pytest.mark.slow
async def test_ctrl_c_stops_the_edge_first_then_the_others_together(
    store_settings: StoreSettings,
) -> None:
    async with delivery_up(store_env(store_settings)) as up:
        await up.wait_line("the delivery mesh is up", up.stdout)
        # An open stream holds tracking's stop for its whole grace period.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{up.ports['tracking']}") as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
            up.process.send_signal(signal.SIGINT)
            assert await asyncio.wait_for(up.process.wait(), 120) == 0
        await asyncio.wait(up.readers, timeout=30)
    events = [
        (m[1], m[2])
        for line in up.stderr
        if (m := re.search(r" (\w+) (?:mesh|edge)\.server: \w+ (stopping|stopped)\b", line))
    ]
    edge_stopped = events.index(("edge", "stopped"))
    # None of the others began to stop before the edge had stopped...
    assert all(i > edge_stopped for i, (name, _) in enumerate(events) if name != "edge")
    # ...and none waited for tracking, which waited for its stream.
    tracking_stopped = events.index(("tracking", "stopped"))
    for name in ("order", "location", "matching"):
        assert events.index((name, "stopping")) < tracking_stopped, events
