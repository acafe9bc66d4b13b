"""The ``delivery`` command: run the whole mesh, one service, the migrations, or make an admin."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import logging
import os
import re
import secrets
import shlex
import signal
import socket
import sys
import urllib.parse
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from mesh.embedded import embedded_stores, free_port
from mesh.logs import configure_logging
from mesh.migrate import migrate
from mesh.server import PARENT_PID_ENV, READY_PREFIX, announce
from mesh.settings import DEFAULT_PORTS, PREFIX, Settings, split_listen

logger = logging.getLogger("delivery")

#: Service name to the module that ``python -m`` runs, in start order.
SERVICES = {
    "order": "order_svc",
    "location": "location_svc",
    "matching": "matching_svc",
    "tracking": "tracking_svc",
    "edge": "edge",
}


#: Seconds a service that died waits before it is started again, the first time; the pause
#: doubles with each death in a row, up to :data:`MAX_RESTART_DELAY_S`.
RESTART_DELAY_S = 0.5
#: The longest pause before a restart.
MAX_RESTART_DELAY_S = 10.0
#: A service that served this long since its last start is well again: its next restart waits
#: :data:`RESTART_DELAY_S` again.
STABLE_AFTER_S = 30.0
#: A service that dies this many times within :data:`DEATH_WINDOW_S` stops the whole mesh.
MAX_DEATHS = 5
#: Seconds over which deaths are counted.
DEATH_WINDOW_S = 60.0


def masked_url(url: str) -> str:
    """``url`` with its password (``user:secret@`` or a ``password=`` parameter) shown as ``***``,
    for printing and logging."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if parts.password:
        userinfo, _, hostinfo = netloc.rpartition("@")
        netloc = f"{userinfo.split(':', 1)[0]}:***@{hostinfo}"
    query = re.sub(r"(?i)(^|[&;])(password=)[^&;]*", r"\1\2***", parts.query)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


def port_free(address: str) -> bool:
    """Whether a server could listen on ``address`` (``host:port``) now, as gRPC binds it."""
    host, port = split_listen(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As gRPC and aiohttp do: a port whose old connections linger in TIME_WAIT is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def taken_ports_message(taken: dict[str, str]) -> str:
    """One line naming the taken ports and their services, and what to do about it."""
    names = ", ".join(f"{split_listen(a)[1]} ({name})" for name, a in taken.items())
    verb = "port {} is" if len(taken) == 1 else "ports {} are"
    return (
        f"delivery up: {verb.format(names)} already taken (another mesh running?); "
        "choose other ports with --base-port PORT, or --base-port 0 for free ones"
    )


def exit_status(code: int) -> str:
    """A process's return code as words: ``status 1`` or ``signal 9 SIGKILL``."""
    if code < 0:
        try:
            return f"signal {-code} {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"


@dataclass
class Child:
    """One service process started by ``delivery up``, and its restarts."""

    name: str
    address: str
    process: asyncio.subprocess.Process | None = None
    #: Set once the current process has printed its ready line.
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    #: Whether any process of this service has served yet (before that, a death is a failed
    #: start, not something to restart).
    served: bool = False
    #: Restarts so far.
    restarts: int = 0
    #: When the current process was started (event loop time).
    started_at: float = 0.0
    #: When recent deaths happened (event loop time), for :data:`MAX_DEATHS`.
    deaths: deque[float] = field(default_factory=deque)
    #: stderr lines held back since a failure began before the ready line (a traceback): shown
    #: only if the failure is not a taken port, which gets one line instead.
    held: list[bytes] = field(default_factory=list)


class Mesh:
    """Starts the services, restarts one that dies, and stops them all in order."""

    def __init__(self, addresses: dict[str, str], env: dict[str, str], stop_timeout: float):
        self.children = {name: Child(name, addresses[name]) for name in SERVICES}
        self._env = env
        self._stop_timeout = stop_timeout
        self._stopping = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        #: Set with a one-line reason when the mesh cannot go on (a service failed to start
        #: or keeps dying).
        self.failed = asyncio.Event()
        self.failure = ""
        #: Set once every service has served.
        self.all_ready = asyncio.Event()

    def start(self) -> None:
        """Starts every service, each under its own supervising task."""
        for child in self.children.values():
            self._tasks[child.name] = asyncio.create_task(self._keep(child))

    def _fail(self, reason: str) -> None:
        if not self.failed.is_set():
            self.failure = reason
            self.failed.set()

    async def _spawn(self, child: Child) -> None:
        child.ready.clear()
        child.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            SERVICES[child.name],
            env=self._env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            # Keep Ctrl-C for us: children are stopped with SIGTERM, in order.
            start_new_session=True,
        )
        child.started_at = asyncio.get_running_loop().time()
        if self._stopping.is_set():
            # The stop began while this process was being started: it missed the signal.
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signal.SIGTERM)

    async def _pump(self, child: Child) -> None:
        """Forwards a child's stdout and notices its ready line."""
        assert child.process and child.process.stdout
        async for raw in child.process.stdout:
            line = raw.decode(errors="replace").rstrip()
            if line.startswith(READY_PREFIX):
                child.ready.set()
                child.served = True
                if all(c.served for c in self.children.values()):
                    self.all_ready.set()
            sys.stdout.write(f"[{child.name}] {line}\n")
            sys.stdout.flush()

    async def _pump_stderr(self, child: Child) -> None:
        """Forwards a child's stderr (its logs) as they are, holding back a start-up failure."""
        assert child.process and child.process.stderr
        child.held = []
        async for raw in child.process.stderr:
            if not child.ready.is_set() and (
                child.held or raw.startswith(b"Traceback") or b"add_port" in raw
            ):
                child.held.append(raw)
                continue
            self._write_held(child)
            sys.stderr.buffer.write(raw)
            sys.stderr.flush()

    def _write_held(self, child: Child) -> None:
        if child.held:
            sys.stderr.buffer.write(b"".join(child.held))
            sys.stderr.flush()
            child.held = []

    async def _keep(self, child: Child) -> None:
        """Runs ``child`` until the mesh stops, starting it again (with backoff) when it dies."""
        loop = asyncio.get_running_loop()
        delay = RESTART_DELAY_S
        while True:
            await self._spawn(child)
            assert child.process is not None
            await asyncio.gather(self._pump(child), self._pump_stderr(child))
            code = await child.process.wait()
            if self._stopping.is_set():
                self._write_held(child)
                return
            status = exit_status(code)
            if not child.ready.is_set() and not port_free(child.address):
                # A bind failure: one line instead of the service's traceback.
                child.held = []
                if not child.served:
                    self._fail(taken_ports_message({child.name: child.address}))
                    return
                status += f", port {split_listen(child.address)[1]} taken"
            self._write_held(child)
            if not child.served:
                self._fail(f"{child.name} exited ({status}) before it served")
                return
            now = loop.time()
            if now - child.started_at >= STABLE_AFTER_S:
                delay = RESTART_DELAY_S
            child.deaths.append(now)
            while child.deaths and child.deaths[0] < now - DEATH_WINDOW_S:
                child.deaths.popleft()
            if len(child.deaths) >= MAX_DEATHS:
                self._fail(
                    f"{child.name} died {len(child.deaths)} times within {DEATH_WINDOW_S:g} s"
                    f" (last: {status}); stopping the mesh"
                )
                return
            child.restarts += 1
            logger.warning(
                "%s exited (%s); restart %d in %g s", child.name, status, child.restarts, delay
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            if self._stopping.is_set():
                return
            delay = min(delay * 2, MAX_RESTART_DELAY_S)

    async def stop(self) -> None:
        """Stops every service: the edge first (browsers' calls in flight still reach the
        services), then the others all at once.

        One after another, each service's stop would add up: a service waits up to its grace
        period (``DELIVERY_GRACE_S``) for streams still open, and ends its background workers,
        which takes a second or more on its own.
        """
        self._stopping.set()
        await self._stop_child(self.children["edge"])
        await asyncio.gather(
            *(self._stop_child(c) for c in self.children.values() if c.name != "edge")
        )

    async def _stop_child(self, child: Child) -> None:
        task = self._tasks.get(child.name)
        if task is None:
            return
        if child.process and child.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(task), self._stop_timeout)
        except TimeoutError:
            logger.warning("%s did not stop within %g s; killed", child.name, self._stop_timeout)
            if child.process and child.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.kill()
            await task


#: The file in ``--data-dir`` where ``delivery up`` leaves shell variables for the running mesh.
ENV_FILE = "mesh.env"


def env_file_text(addresses: dict[str, str], database_url: str, env: dict[str, str]) -> str:
    """The shell variables of a running mesh, for ``source``: ``ORDER=127.0.0.1:50051`` and so
    on for each service, ``DATABASE_URL`` (unmasked: the file is the owner's only), and
    ``<SERVICE>_METRICS`` for each service given a fixed metrics address."""
    lines = [
        "# The delivery mesh that `delivery up` runs; `source` this file to reach it (see",
        "# docs/operations.md). Removed when the mesh stops.",
        *(f"{name.upper()}={shlex.quote(address)}" for name, address in addresses.items()),
        f"DATABASE_URL={shlex.quote(database_url)}",
    ]
    for name in addresses:
        metrics = env.get(f"{PREFIX}{name.upper()}_METRICS_LISTEN", "")
        if metrics and split_listen(metrics)[1]:
            lines.append(f"{name.upper()}_METRICS={shlex.quote(metrics)}")
    return "\n".join(lines) + "\n"


def write_env_file(path: Path, text: str) -> None:
    """Writes ``text`` to ``path``, readable by its owner only (it holds the database URL)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(text)


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


async def _run_mesh(
    args: argparse.Namespace, addresses: dict[str, str], database_url: str, redis_url: str
) -> int:
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
    print(f"applying migrations to {masked_url(database_url)}", flush=True)
    await migrate(database_url)

    mesh = Mesh(addresses, env, args.stop_timeout)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    waits = [
        asyncio.create_task(stop.wait()),
        asyncio.create_task(mesh.failed.wait()),
        asyncio.create_task(mesh.all_ready.wait()),
    ]
    exit_code = 0
    env_file = Path(args.data_dir) / ENV_FILE
    try:
        mesh.start()
        await asyncio.wait(waits, timeout=args.start_timeout, return_when="FIRST_COMPLETED")
        if mesh.all_ready.is_set() and not stop.is_set() and not mesh.failed.is_set():
            write_env_file(env_file, env_file_text(addresses, database_url, env))
            print("\nthe delivery mesh is up (Ctrl-C stops it):", flush=True)
            for child in mesh.children.values():
                kind = "gRPC-web + pages" if child.name == "edge" else "gRPC"
                print(f"  {child.name:<9} {child.address:<22} {kind}", flush=True)
            print(
                f"  postgres  {masked_url(database_url)}\n  redis     {masked_url(redis_url)}\n"
                f"  shell     source {shlex.quote(str(env_file))}"
                "   (ORDER, LOCATION, ... for grpcurl: docs/operations.md)\n",
                flush=True,
            )
            await asyncio.wait(waits[:2], return_when="FIRST_COMPLETED")
        if mesh.failed.is_set() and not stop.is_set():
            print(mesh.failure, file=sys.stderr, flush=True)
            exit_code = 1
        elif not stop.is_set() and not mesh.all_ready.is_set():
            late = [c.name for c in mesh.children.values() if not c.served]
            print(
                f"the mesh did not start within {args.start_timeout:g} s: {', '.join(late)}",
                file=sys.stderr,
                flush=True,
            )
            exit_code = 1
    finally:
        for task in waits:
            task.cancel()
        env_file.unlink(missing_ok=True)
        await mesh.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    print("the delivery mesh stopped", flush=True)
    return exit_code


def cmd_up(args: argparse.Namespace) -> int:
    """Runs every service and the edge, on embedded stores unless configured."""
    try:
        return _up(args)
    except KeyboardInterrupt:
        # Ctrl-C before the services started (embedded stores or migrations under way): what
        # had started is stopped on the way out; no traceback for a stop that was asked for.
        print("interrupted while starting; the delivery mesh stopped", file=sys.stderr)
        return 130


def _up(args: argparse.Namespace) -> int:
    database_url = os.environ.get(PREFIX + "DATABASE_URL") or None
    redis_url = os.environ.get(PREFIX + "REDIS_URL") or None
    data_dir = Path(args.data_dir).resolve()
    addresses = _addresses(args.base_port, args.host)
    # Before anything starts: a taken port (another mesh running) is one line, not a traceback.
    taken = {name: address for name, address in addresses.items() if not port_free(address)}
    if taken:
        print(taken_ports_message(taken), file=sys.stderr, flush=True)
        return 1
    with embedded_stores(data_dir, postgres=database_url is None, redis=redis_url is None) as (
        embedded_db,
        embedded_redis,
    ):
        db = database_url or embedded_db
        rd = redis_url or embedded_redis
        assert db and rd
        if embedded_redis:
            announce("redis", int(embedded_redis.rsplit(":", 1)[1].split("/")[0]), embedded=True)
        return asyncio.run(_run_mesh(args, addresses, db, rd))


def cmd_migrate(args: argparse.Namespace) -> int:
    """Applies pending migrations."""
    url = args.database_url or Settings.from_env("order").stores.database_url
    applied = asyncio.run(migrate(url))
    if applied:
        print("applied " + ", ".join(f"{v:04d}" for v in applied))
    else:
        print("schema is up to date")
    return 0


def cmd_admin_create(args: argparse.Namespace) -> int:
    """Creates an admin account (SignUp cannot), or confirms that it exists."""
    from mesh.errors import DomainError
    from order_svc.admins import create_admin

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("password for the new admin: ")
        if getpass.getpass("the same again: ") != password:
            print("delivery admin create: the passwords differ", file=sys.stderr)
            return 1
    url = args.database_url or Settings.from_env("order").stores.database_url
    try:
        user, created = asyncio.run(
            create_admin(url, email=args.email, name=args.name, password=password)
        )
    except DomainError as error:
        print(f"delivery admin create: {error.message}", file=sys.stderr)
        return 1
    if created:
        print(f"created admin {user.email} ({user.id}); sign in with AccountService/Login")
    else:
        print(f"{user.email} is an admin already ({user.id}); nothing changed, password included")
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

    admin = sub.add_parser("admin", help="operator accounts")
    admin_sub = admin.add_subparsers(dest="admin_command", required=True)
    create = admin_sub.add_parser(
        "create",
        help="create an admin account in the database (admins cannot sign up); safe to repeat",
    )
    create.add_argument("--email", required=True, help="the admin's email, used to sign in")
    create.add_argument("--name", required=True, help="the admin's display name")
    create.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of stdin instead of prompting",
    )
    create.add_argument(
        "--database-url",
        help="default: DELIVERY_DATABASE_URL (`delivery up` writes DATABASE_URL to its mesh.env)",
    )
    create.set_defaults(func=cmd_admin_create)

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
