"""location_svc as several worker processes on one port, under a supervisor."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mesh.settings import StoreSettings
from mesh.testing import spawn
from tests.polling import eventually


def _children(pid: int) -> set[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return {int(p) for p in text.split()}


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


async def _serving_over(port: int, connections: int) -> None:
    """Health answers SERVING over ``connections`` separate TCP connections."""
    for _ in range(connections):
        channel = grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
        )
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="delivery.location.v1.LocationService"),
                timeout=10,
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        finally:
            await channel.close()


async def _start(
    store_settings: StoreSettings, command: tuple[str, ...] = ("location_svc",)
) -> tuple[asyncio.subprocess.Process, int]:
    process, ports = await spawn(
        [sys.executable, "-m", *command],
        {
            "DELIVERY_DATABASE_URL": store_settings.database_url,
            "DELIVERY_REDIS_URL": store_settings.redis_url,
            "DELIVERY_LOCATION_LISTEN": "127.0.0.1:0",
            "DELIVERY_LOCATION_WORKERS": "2",
            "DELIVERY_GRACE_S": "2",
        },
    )
    return process, ports["location"]


async def test_workers_share_the_port_restart_and_stop_with_the_supervisor(
    store_settings: StoreSettings,
) -> None:
    process, port = await _start(store_settings)
    try:
        workers = _children(process.pid)
        assert len(workers) == 2
        await _serving_over(port, 6)

        # A worker that dies is started again; the service keeps answering meanwhile.
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        await eventually(lambda: len(_children(process.pid) - {victim}) == 2)
        await _serving_over(port, 6)
        # The workers now, the restarted one included: all must be gone after SIGTERM.
        workers = _children(process.pid)
        assert victim not in workers

        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
        for pid in workers:
            await eventually(lambda pid=pid: not _alive(pid))
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_workers_die_with_a_killed_supervisor(store_settings: StoreSettings) -> None:
    process, _ = await _start(store_settings)
    workers = _children(process.pid)
    assert len(workers) == 2
    process.kill()
    await process.wait()
    # Nothing is left holding the port.
    for pid in workers:
        await eventually(lambda pid=pid: not _alive(pid))


async def test_delivery_serve_runs_the_workers_too(store_settings: StoreSettings) -> None:
    process, port = await _start(store_settings, ("mesh.cli", "serve", "location"))
    try:
        assert len(_children(process.pid)) == 2
        await _serving_over(port, 2)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_a_single_process_service_refuses_workers(store_settings: StoreSettings) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mesh.cli",
        "serve",
        "order",
        env={
            **os.environ,
            "DELIVERY_DATABASE_URL": store_settings.database_url,
            "DELIVERY_REDIS_URL": store_settings.redis_url,
            "DELIVERY_ORDER_LISTEN": "127.0.0.1:0",
            "DELIVERY_ORDER_WORKERS": "2",
        },
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 1
    assert b"order runs as one process" in err


_PARENT = """
import asyncio, sys
from mesh.testing import spawn

async def main():
    process, _ = await spawn([sys.executable, "-m", sys.argv[1]], {})
    print(process.pid, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


@pytest.mark.parametrize("module", ["order_svc", "edge", "order_svc.relay"])
async def test_a_spawned_service_dies_with_a_killed_parent(
    store_settings: StoreSettings, module: str
) -> None:
    """spawn (as ``delivery up``) names the parent: a SIGKILLed parent leaves no service behind."""
    parent = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _PARENT,
        module,
        env={
            **os.environ,
            "DELIVERY_DATABASE_URL": store_settings.database_url,
            "DELIVERY_REDIS_URL": store_settings.redis_url,
            "DELIVERY_ORDER_LISTEN": "127.0.0.1:0",
            "DELIVERY_EDGE_LISTEN": "127.0.0.1:0",
        },
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert parent.stdout is not None
        service = int(await asyncio.wait_for(parent.stdout.readline(), 60))
        assert _alive(service)
        parent.kill()
        await parent.wait()
        await eventually(lambda: not _alive(service))
    finally:
        if parent.returncode is None:
            parent.kill()
            await parent.wait()
