"""`delivery up` on embedded PostgreSQL and Redis: every service serves, Ctrl-C stops all."""

from __future__ import annotations

import asyncio
import os
import signal
import struct
import sys
from pathlib import Path

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mesh.cli import SERVICES
from mesh.embedded import tcp_reachable
from mesh.testing import spawn

GRPC_SERVICES = {
    "order": [
        "delivery.order.v1.AccountService",
        "delivery.order.v1.MerchantService",
        "delivery.order.v1.OrderService",
    ],
    "location": ["delivery.location.v1.LocationService"],
    "matching": ["delivery.matching.v1.MatchingService"],
    "tracking": ["delivery.tracking.v1.TrackingService"],
}


async def _grpc_web_health(port: int) -> tuple[int, bytes]:
    frame = struct.pack(">BI", 0, 0)  # an empty HealthCheckRequest
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://127.0.0.1:{port}/grpc.health.v1.Health/Check",
            data=frame,
            headers={"content-type": "application/grpc-web+proto", "x-grpc-web": "1"},
        ) as response,
    ):
        return response.status, await response.read()


@pytest.mark.slow
async def test_delivery_up_runs_the_mesh_on_embedded_stores(tmp_path: Path) -> None:
    # Neither DELIVERY_DATABASE_URL nor DELIVERY_REDIS_URL: `up` must start embedded stores.
    env = {k: v for k, v in os.environ.items() if not k.startswith("DELIVERY_")}
    delivery = str(Path(sys.executable).parent / "delivery")
    data = tmp_path / "data"
    process, ports = await spawn(
        [delivery, "up", "--base-port", "0", "--data-dir", str(data)],
        {**env, "PYTHONUNBUFFERED": "1"},
        inherit_env=False,
        ready_timeout=180,
    )
    redis_port = ports.pop("redis")
    try:
        assert set(ports) == set(SERVICES)
        for service, names in GRPC_SERVICES.items():
            async with grpc.aio.insecure_channel(f"127.0.0.1:{ports[service]}") as channel:
                health = health_pb2_grpc.HealthStub(channel)
                for name in ["", *names]:
                    reply = await health.Check(
                        health_pb2.HealthCheckRequest(service=name), timeout=5
                    )
                    assert reply.status == health_pb2.HealthCheckResponse.SERVING, (service, name)

        status, body = await _grpc_web_health(ports["edge"])
        assert status == 200
        flag, length = struct.unpack(">BI", body[:5])
        reply = health_pb2.HealthCheckResponse.FromString(body[5 : 5 + length])
        assert (flag, reply.status) == (0, health_pb2.HealthCheckResponse.SERVING)
        assert b"grpc-status:0" in body[5 + length :]

        assert tcp_reachable("127.0.0.1", redis_port)
        assert (data / "postgres" / "postmaster.pid").exists()
    finally:
        process.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(process.wait(), 60)
    assert code == 0
    # Everything it started is gone: services, embedded Redis and PostgreSQL.
    for port in ports.values():
        assert not tcp_reachable("127.0.0.1", port)
    assert not tcp_reachable("127.0.0.1", redis_port)
    assert not (data / "postgres" / "postmaster.pid").exists()


def _reaper_of(parent: int) -> int:
    """The pid of the process that stops the embedded stores of ``delivery up`` ``parent``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent and b"mesh.embedded" in argv:
            return int(entry.name)
    raise AssertionError("delivery up started no reaper")


async def _until_gone(data: Path, redis_port: int) -> None:
    for _ in range(1200):
        if (
            not tcp_reachable("127.0.0.1", redis_port)
            and not (data / "postgres" / "postmaster.pid").exists()
        ):
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the embedded stores outlived delivery up")


async def _order_serves(port: int) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=30
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_a_killed_delivery_up_leaves_no_store_behind_and_the_next_start_serves(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DELIVERY_")}
    delivery = str(Path(sys.executable).parent / "delivery")
    data = tmp_path / "data"
    args = [delivery, "up", "--base-port", "0", "--data-dir", str(data)]
    up_env = {**env, "PYTHONUNBUFFERED": "1"}

    # kill -9 of delivery up: its embedded PostgreSQL and Redis end with it.
    process, ports = await spawn(args, up_env, inherit_env=False, ready_timeout=180)
    process.kill()
    await process.wait()
    await _until_gone(data, ports["redis"])

    # Killed with the process that would stop them: PostgreSQL is left running in the folder.
    process, ports = await spawn(args, up_env, inherit_env=False, ready_timeout=180)
    os.kill(_reaper_of(process.pid), signal.SIGKILL)
    process.kill()
    await process.wait()
    assert (data / "postgres" / "postmaster.pid").exists()

    # The next start in that folder comes up and serves, and its Ctrl-C stops everything.
    process, ports = await spawn(args, up_env, inherit_env=False, ready_timeout=180)
    try:
        await _order_serves(ports["order"])
    finally:
        process.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(process.wait(), 120)
    assert code == 0
    assert not tcp_reachable("127.0.0.1", ports["redis"])
    assert not (data / "postgres" / "postmaster.pid").exists()


def _processes() -> dict[int, tuple[str, list[str], str]]:
    """``{pid: (state, argv, working directory)}`` of every process this test may look at."""
    found: dict[int, tuple[str, list[str], str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            raw = (entry / "cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        found[int(entry.name)] = (state, [a.decode(errors="replace") for a in raw if a], cwd)
    return found


def _postmaster(pgdata: Path) -> int | None:
    """The pid of the PostgreSQL server pg_ctl started on ``pgdata``, if it runs: pg_ctl starts
    it as ``postgres -D <pgdata> ...`` (initdb's own runs have no -D)."""
    return next(
        (
            pid
            for pid, (_, argv, _) in _processes().items()
            if argv[:1] and Path(argv[0]).name == "postgres" and argv[1:3] == ["-D", str(pgdata)]
        ),
        None,
    )


def _of_data_dir(data: Path) -> dict[int, list[str]]:
    """The live processes working in ``data`` or naming it: the embedded stores (PostgreSQL's
    backends and redis-server rename themselves but run in their folders) and the reaper."""
    return {
        pid: argv
        for pid, (state, argv, cwd) in _processes().items()
        if state != "Z" and (cwd.startswith(str(data)) or any(str(data) in a for a in argv))
    }


@pytest.mark.slow
async def test_ctrl_c_while_the_embedded_stores_start_ends_with_one_line_and_leaves_none(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DELIVERY_")}
    delivery = str(Path(sys.executable).parent / "delivery")
    data = tmp_path / "data"
    process = await asyncio.create_subprocess_exec(
        delivery,
        "up",
        "--base-port",
        "0",
        "--data-dir",
        str(data),
        env={**env, "PYTHONUNBUFFERED": "1"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    output = asyncio.create_task(process.communicate())
    try:
        # The embedded PostgreSQL's server appears: the stores are starting.
        while (postmaster := _postmaster(data / "postgres")) is None:
            assert not output.done(), "delivery up ended before its PostgreSQL started"
            await asyncio.sleep(0.01)
        # Held where it is, PostgreSQL cannot get ready or take migrations: `delivery up` is
        # certainly still starting when Ctrl-C comes. Let go at once after, so it can be stopped.
        os.kill(postmaster, signal.SIGSTOP)
        try:
            process.send_signal(signal.SIGINT)
        finally:
            os.kill(postmaster, signal.SIGCONT)
        stdout, stderr = await asyncio.wait_for(output, 120)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    err = stderr.decode()
    assert process.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    line = "interrupted while starting; the delivery mesh stopped"
    assert err.count(line) == 1 and err.rstrip("\n").endswith(line), err
    assert "the delivery mesh is up" not in stdout.decode()
    # What had started (PostgreSQL, perhaps Redis, the reaper) is stopped before it exits.
    assert _of_data_dir(data) == {}
    assert not (data / "postgres" / "postmaster.pid").exists()
