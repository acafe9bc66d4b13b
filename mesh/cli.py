"""The ``delivery`` command: run the whole mesh, one service, or the migrations."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mesh.embedded import embedded_stores, free_port
from mesh.logs import configure_logging
from mesh.migrate import migrate
from mesh.server import PARENT_PID_ENV, READY_PREFIX, announce
from mesh.settings import DEFAULT_PORTS, PREFIX, Settings

logger = logging.getLogger("delivery")

#: Service name to the module that ``python -m`` runs, in start order.
SERVICES = {
    "order": "order_svc",
    "location": "location_svc",
    "matching": "matching_svc",
    "tracking": "tracking_svc",
    "edge": "edge",
}


@dataclass
class Child:
    """One service process started by ``delivery up``."""

    name: str
    address: str
    process: asyncio.subprocess.Process | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)


async def _pump(child: Child) -> None:
    """Forwards a child's stdout and notices its ready line."""
    assert child.process and child.process.stdout
    async for raw in child.process.stdout:
        line = raw.decode(errors="replace").rstrip()
        if line.startswith(READY_PREFIX):
            child.ready.set()
        sys.stdout.write(f"[{child.name}] {line}\n")
        sys.stdout.flush()


def _addresses(base_port: int, host: str) -> dict[str, str]:
    if base_port == 0:
        return {name: f"{host}:{free_port()}" for name in SERVICES}
    ports = {
        "order": base_port,
        "location": base_port + 1,
        "matching": base_port + 2,
        "tracking": base_port + 3,
        "edge": DEFAULT_PORTS["edge"] if base_port == DEFAULT_PORTS["order"] else base_port + 4,
    }
    return {name: f"{host}:{port}" for name, port in ports.items()}


async def _run_mesh(args: argparse.Namespace, database_url: str, redis_url: str) -> int:
    addresses = _addresses(args.base_port, args.host)
    env = dict(os.environ)
    env.update(
        {
            # The services die with this process, even if it is killed without a chance to
            # stop them.
            PARENT_PID_ENV: str(os.getpid()),
            PREFIX + "DATABASE_URL": database_url,
            PREFIX + "REDIS_URL": redis_url,
            **{f"{PREFIX}{name.upper()}_LISTEN": addr for name, addr in addresses.items()},
            **{
                f"{PREFIX}{name.upper()}_ADDR": addr
                for name, addr in addresses.items()
                if name != "edge"
            },
        }
    )
    env.pop(PREFIX + "LISTEN", None)
    # The services authenticate each other with tokens derived from this; a fresh random
    # secret per run unless the operator set one.
    env.setdefault(PREFIX + "SERVICE_SECRET", secrets.token_hex(32))
    print(f"applying migrations to {database_url}", flush=True)
    await migrate(database_url)

    children = [Child(name, addresses[name]) for name in SERVICES]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    pumps: list[asyncio.Task[None]] = []
    exit_code = 0
    try:
        for child in children:
            child.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                SERVICES[child.name],
                env=env,
                stdout=asyncio.subprocess.PIPE,
                # Keep Ctrl-C for us: children are stopped with SIGTERM, in order.
                start_new_session=True,
            )
            pumps.append(asyncio.create_task(_pump(child)))
        waits: dict[asyncio.Future[Any], Child] = {
            asyncio.create_task(child.process.wait()): child  # type: ignore[union-attr]
            for child in children
        }
        ready: asyncio.Future[Any] = asyncio.gather(*(c.ready.wait() for c in children))
        stopped: asyncio.Future[Any] = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait(
            {ready, stopped, *waits}, timeout=args.start_timeout, return_when="FIRST_COMPLETED"
        )
        if ready not in done:
            ready.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ready
            if not stop.is_set():
                dead = [waits[t].name for t in done if t in waits]
                print(f"the mesh did not start: {', '.join(dead) or 'timed out'}", file=sys.stderr)
                exit_code = 1
        else:
            print("\nthe delivery mesh is up (Ctrl-C stops it):", flush=True)
            for child in children:
                kind = "gRPC-web + pages" if child.name == "edge" else "gRPC"
                print(f"  {child.name:<9} {child.address:<22} {kind}", flush=True)
            print(f"  postgres  {database_url}\n  redis     {redis_url}\n", flush=True)
            done, _ = await asyncio.wait({stopped, *waits}, return_when="FIRST_COMPLETED")
            for task in done:
                if task in waits:
                    print(f"{waits[task].name} exited unexpectedly; stopping", file=sys.stderr)
                    exit_code = 1
        stopped.cancel()
    finally:
        # Edge first (it calls the others), then the services in reverse start order.
        for child in reversed(children):
            if child.process and child.process.returncode is None:
                child.process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(child.process.wait(), timeout=args.stop_timeout)
                except TimeoutError:
                    child.process.kill()
                    await child.process.wait()
        for pump in pumps:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    print("the delivery mesh stopped", flush=True)
    return exit_code


def cmd_up(args: argparse.Namespace) -> int:
    """Runs every service and the edge, on embedded stores unless configured."""
    database_url = os.environ.get(PREFIX + "DATABASE_URL") or None
    redis_url = os.environ.get(PREFIX + "REDIS_URL") or None
    data_dir = Path(args.data_dir).resolve()
    with embedded_stores(data_dir, postgres=database_url is None, redis=redis_url is None) as (
        embedded_db,
        embedded_redis,
    ):
        db = database_url or embedded_db
        rd = redis_url or embedded_redis
        assert db and rd
        if embedded_redis:
            announce("redis", int(embedded_redis.rsplit(":", 1)[1].split("/")[0]), embedded=True)
        return asyncio.run(_run_mesh(args, db, rd))


def cmd_migrate(args: argparse.Namespace) -> int:
    """Applies pending migrations."""
    url = args.database_url or Settings.from_env("order").stores.database_url
    applied = asyncio.run(migrate(url))
    if applied:
        print("applied " + ", ".join(f"{v:04d}" for v in applied))
    else:
        print("schema is up to date")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Runs one service in the foreground, as ``python -m <service>`` does (location_svc as a
    supervisor of ``DELIVERY_LOCATION_WORKERS`` processes when that is more than one)."""
    from mesh.workers import serve

    module = __import__(SERVICES[args.service] + ".server", fromlist=["main"])
    serve(args.service, SERVICES[args.service], module.main)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``delivery``."""
    parser = argparse.ArgumentParser(prog="delivery", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the whole mesh (embedded stores unless configured)")
    up.add_argument("--data-dir", default=".delivery", help="where embedded stores keep data")
    up.add_argument(
        "--base-port",
        type=int,
        default=DEFAULT_PORTS["order"],
        help="first gRPC port (order, then location, matching, tracking); 0 picks free ports",
    )
    up.add_argument("--host", default="127.0.0.1", help="address the services bind")
    up.add_argument("--start-timeout", type=float, default=60.0, help="seconds to wait for all")
    up.add_argument("--stop-timeout", type=float, default=20.0, help="seconds each may drain")
    up.set_defaults(func=cmd_up)

    mig = sub.add_parser("migrate", help="apply pending SQL migrations (safe to repeat)")
    mig.add_argument("--database-url", help="default: DELIVERY_DATABASE_URL")
    mig.set_defaults(func=cmd_migrate)

    serve = sub.add_parser("serve", help="run one service in the foreground")
    serve.add_argument("service", choices=sorted(SERVICES))
    serve.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``delivery`` console command."""
    args = build_parser().parse_args(argv)
    configure_logging("delivery", os.environ.get(PREFIX + "LOG_LEVEL", "INFO").upper())
    # pgserver narrates every pg_ctl call at INFO; only its warnings matter here.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
