"""Settings read once from the environment into frozen dataclasses."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

#: Every variable this project reads starts with this.
PREFIX = "DELIVERY_"

#: The port each service listens on when run alone and none is configured.
DEFAULT_PORTS = {
    "order": 50051,
    "location": 50052,
    "matching": 50053,
    "tracking": 50054,
    "edge": 8080,
}


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(PREFIX + name)
    return value if value not in (None, "") else None


#: Set in each worker's environment (see :mod:`mesh.workers`): its index, 0 to N-1.
WORKER_INDEX_ENV = "DELIVERY_WORKER_INDEX"


def worker_index() -> int | None:
    """This process's index among its service's workers, or ``None`` when it runs alone."""
    value = os.environ.get(WORKER_INDEX_ENV)
    return int(value) if value else None


def split_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) as the host and the port."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def env_str(env: Mapping[str, str], name: str, default: str) -> str:
    """``DELIVERY_<name>`` as a string, or ``default``."""
    return _get(env, name) or default


def env_float(env: Mapping[str, str], name: str, default: float) -> float:
    """``DELIVERY_<name>`` as a float, or ``default``; a malformed value is an error at startup."""
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{PREFIX}{name} must be a number, got {raw!r}") from None


def env_positive(env: Mapping[str, str], name: str, default: float) -> float:
    """:func:`env_float` that must be above zero."""
    value = env_float(env, name, default)
    if not value > 0:
        raise ValueError(f"{PREFIX}{name} must be positive, got {value}")
    return value


def env_non_negative(env: Mapping[str, str], name: str, default: float) -> float:
    """:func:`env_float` that must not be below zero."""
    value = env_float(env, name, default)
    if not value >= 0:
        raise ValueError(f"{PREFIX}{name} must not be negative, got {value}")
    return value


def env_int(env: Mapping[str, str], name: str, default: int) -> int:
    """``DELIVERY_<name>`` as an int, or ``default``; a malformed value is an error at startup."""
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{PREFIX}{name} must be an integer, got {raw!r}") from None


def env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    """``DELIVERY_<name>`` as a bool (1/true/yes/on), or ``default``."""
    raw = _get(env, name)
    if raw is None:
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class KeepaliveSettings:
    """HTTP/2 keepalive for long-lived mobile streams.

    Phones sleep, switch networks and sit behind NATs that forget idle flows after a few
    minutes; the server pings idle connections so dead ones are found, and lets clients
    ping as often as every ``min_client_ping_interval_s`` without being sent GOAWAY.
    """

    #: Seconds between the server's keepalive pings on an otherwise idle connection.
    time_s: float = 60.0
    #: Seconds to wait for a ping ack before the connection is considered dead.
    timeout_s: float = 20.0
    #: The most frequent client ping the server tolerates, in seconds.
    min_client_ping_interval_s: float = 15.0
    #: Whether clients may ping while no call is open (a driver app between streams).
    permit_without_calls: bool = True
    #: Maximum connection idle time before the server closes it, in seconds (0 = never).
    max_connection_idle_s: float = 0.0

    def server_options(self) -> list[tuple[str, int]]:
        """The grpc channel arguments that apply these settings on a server."""
        options = [
            ("grpc.keepalive_time_ms", int(self.time_s * 1000)),
            ("grpc.keepalive_timeout_ms", int(self.timeout_s * 1000)),
            ("grpc.keepalive_permit_without_calls", int(self.permit_without_calls)),
            (
                "grpc.http2.min_ping_interval_without_data_ms",
                int(self.min_client_ping_interval_s * 1000),
            ),
            ("grpc.http2.max_pings_without_data", 0),
        ]
        if self.max_connection_idle_s > 0:
            options.append(("grpc.max_connection_idle_ms", int(self.max_connection_idle_s * 1000)))
        return options

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> KeepaliveSettings:
        """Reads ``DELIVERY_KEEPALIVE_*``."""
        return cls(
            time_s=env_float(env, "KEEPALIVE_TIME_S", cls.time_s),
            timeout_s=env_float(env, "KEEPALIVE_TIMEOUT_S", cls.timeout_s),
            min_client_ping_interval_s=env_float(
                env, "KEEPALIVE_MIN_CLIENT_PING_S", cls.min_client_ping_interval_s
            ),
            permit_without_calls=env_bool(
                env, "KEEPALIVE_PERMIT_WITHOUT_CALLS", cls.permit_without_calls
            ),
            max_connection_idle_s=env_float(
                env, "KEEPALIVE_MAX_CONNECTION_IDLE_S", cls.max_connection_idle_s
            ),
        )


@dataclass(frozen=True)
class ServerSettings:
    """How one service process listens and stops."""

    #: The address to bind, ``host:port``; port 0 picks a free one.
    listen: str = "127.0.0.1:0"
    #: Seconds in-flight calls get to finish after SIGTERM before they are cancelled.
    grace_s: float = 10.0
    #: Seconds to keep serving after health turns NOT_SERVING, so load balancers notice.
    drain_delay_s: float = 0.0
    #: Largest message accepted or sent, in bytes (a proof-of-delivery photo must fit).
    max_message_bytes: int = 8 * 1024 * 1024
    #: Largest number of concurrent streams on one HTTP/2 connection.
    max_concurrent_streams: int = 1000
    #: HTTP/2 keepalive for mobile clients.
    keepalive: KeepaliveSettings = field(default_factory=KeepaliveSettings)
    #: Processes serving this service on one port (SO_REUSEPORT spreads the connections);
    #: more than one only where the service supports it (see ``mesh.workers``).
    workers: int = 1
    #: This process is one of several sharing the port (set by the supervisor, not by hand).
    reuse_port: bool = False
    #: Where Prometheus metrics are served over HTTP (``host:port``; empty: not served).
    metrics_listen: str = ""

    def server_options(self) -> list[tuple[str, int]]:
        """The grpc channel arguments for a server with these settings."""
        return [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_concurrent_streams", self.max_concurrent_streams),
            # Off unless the port is shared on purpose: a second server on a taken port must
            # fail, not quietly split the traffic.
            ("grpc.so_reuseport", int(self.reuse_port)),
            *self.keepalive.server_options(),
        ]

    @classmethod
    def from_env(cls, env: Mapping[str, str], service: str) -> ServerSettings:
        """Reads ``DELIVERY_<SERVICE>_LISTEN`` (or ``DELIVERY_LISTEN``) and the shared knobs."""
        default_listen = f"0.0.0.0:{DEFAULT_PORTS[service]}"
        listen = _get(env, f"{service.upper()}_LISTEN") or _get(env, "LISTEN") or default_listen
        return cls(
            listen=listen,
            grace_s=env_float(env, "GRACE_S", cls.grace_s),
            drain_delay_s=env_float(env, "DRAIN_DELAY_S", cls.drain_delay_s),
            max_message_bytes=env_int(env, "MAX_MESSAGE_BYTES", cls.max_message_bytes),
            max_concurrent_streams=env_int(
                env, "MAX_CONCURRENT_STREAMS", cls.max_concurrent_streams
            ),
            keepalive=KeepaliveSettings.from_env(env),
            workers=max(1, env_int(env, f"{service.upper()}_WORKERS", cls.workers)),
            reuse_port=_get(env, "WORKER_INDEX") is not None,
            metrics_listen=_get(env, f"{service.upper()}_METRICS_LISTEN") or "",
        )


@dataclass(frozen=True)
class StoreSettings:
    """Where PostgreSQL and Redis are."""

    #: asyncpg DSN of the system of record.
    database_url: str = "postgresql://postgres@127.0.0.1:5432/delivery"
    #: Redis URL; ``redis+cluster://host:port`` selects Redis Cluster mode.
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: Smallest number of pooled PostgreSQL connections per process.
    db_pool_min: int = 2
    #: Largest number of pooled PostgreSQL connections per process.
    db_pool_max: int = 20
    #: Largest number of Redis connections per process.
    redis_max_connections: int = 200
    # The timeouts below make a frozen or unreachable store an UNAVAILABLE within seconds
    # instead of a call that hangs until the client's deadline.
    #: Seconds to open a PostgreSQL connection (TCP, TLS, authentication).
    db_connect_timeout_s: float = 2.0
    #: Seconds one PostgreSQL statement may take unless its caller passes its own ``timeout=``.
    db_command_timeout_s: float = 5.0
    #: Seconds a caller waits for a pooled PostgreSQL connection (connecting one included).
    db_acquire_timeout_s: float = 5.0
    #: Seconds to open a Redis connection.
    redis_connect_timeout_s: float = 1.0
    #: Seconds a Redis command may wait for its reply; a blocking read (XREADGROUP BLOCK,
    #: BLPOP...) gets its own block time on top, pub/sub reads are not bounded by it.
    redis_timeout_s: float = 2.0
    #: Seconds a caller waits for a free Redis connection when all of them are busy.
    redis_pool_wait_s: float = 2.0
    #: Seconds between two checks that the stores answer (health turns NOT_SERVING if not).
    probe_every_s: float = 1.0
    #: Seconds one such check may take before the store counts as unreachable.
    probe_timeout_s: float = 2.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> StoreSettings:
        """Reads ``DELIVERY_DATABASE_URL``, ``DELIVERY_REDIS_URL``, pool sizes and timeouts."""
        return cls(
            database_url=env_str(env, "DATABASE_URL", cls.database_url),
            redis_url=env_str(env, "REDIS_URL", cls.redis_url),
            db_pool_min=env_int(env, "DB_POOL_MIN", cls.db_pool_min),
            db_pool_max=env_int(env, "DB_POOL_MAX", cls.db_pool_max),
            redis_max_connections=env_int(env, "REDIS_MAX_CONNECTIONS", cls.redis_max_connections),
            db_connect_timeout_s=env_positive(
                env, "DB_CONNECT_TIMEOUT_S", cls.db_connect_timeout_s
            ),
            db_command_timeout_s=env_positive(
                env, "DB_COMMAND_TIMEOUT_S", cls.db_command_timeout_s
            ),
            db_acquire_timeout_s=env_positive(
                env, "DB_ACQUIRE_TIMEOUT_S", cls.db_acquire_timeout_s
            ),
            redis_connect_timeout_s=env_positive(
                env, "REDIS_CONNECT_TIMEOUT_S", cls.redis_connect_timeout_s
            ),
            redis_timeout_s=env_positive(env, "REDIS_TIMEOUT_S", cls.redis_timeout_s),
            redis_pool_wait_s=env_positive(env, "REDIS_POOL_WAIT_S", cls.redis_pool_wait_s),
            probe_every_s=env_positive(env, "STORE_PROBE_EVERY_S", cls.probe_every_s),
            probe_timeout_s=env_positive(env, "STORE_PROBE_TIMEOUT_S", cls.probe_timeout_s),
        )


@dataclass(frozen=True)
class AuthSettings:
    """Sessions for people and the shared identity of services."""

    #: How long a session token lives after login, in seconds (an absolute lifetime).
    session_ttl_s: int = 7 * 24 * 3600
    #: Secret from which service-to-service tokens are derived. Empty (the default) refuses
    #: every service token: there is no well-known fallback anyone could mint tokens from.
    #: ``delivery up`` generates a random one for the processes it starts.
    service_secret: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AuthSettings:
        """Reads ``DELIVERY_SESSION_TTL_S`` and ``DELIVERY_SERVICE_SECRET``."""
        return cls(
            session_ttl_s=env_int(env, "SESSION_TTL_S", cls.session_ttl_s),
            service_secret=env_str(env, "SERVICE_SECRET", cls.service_secret),
        )


@dataclass(frozen=True)
class PeerSettings:
    """Where the other services of the mesh answer."""

    #: Address of order_svc.
    order_addr: str = f"127.0.0.1:{DEFAULT_PORTS['order']}"
    #: Address of location_svc.
    location_addr: str = f"127.0.0.1:{DEFAULT_PORTS['location']}"
    #: Address of matching_svc.
    matching_addr: str = f"127.0.0.1:{DEFAULT_PORTS['matching']}"
    #: Address of tracking_svc.
    tracking_addr: str = f"127.0.0.1:{DEFAULT_PORTS['tracking']}"
    #: Seconds any outbound call may take when the caller set no tighter deadline.
    call_budget_s: float = 5.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> PeerSettings:
        """Reads ``DELIVERY_<SERVICE>_ADDR`` for each peer."""
        return cls(
            order_addr=env_str(env, "ORDER_ADDR", cls.order_addr),
            location_addr=env_str(env, "LOCATION_ADDR", cls.location_addr),
            matching_addr=env_str(env, "MATCHING_ADDR", cls.matching_addr),
            tracking_addr=env_str(env, "TRACKING_ADDR", cls.tracking_addr),
            call_budget_s=env_float(env, "CALL_BUDGET_S", cls.call_budget_s),
        )

    def as_dict(self) -> dict[str, str]:
        """Service name to address."""
        return {
            "order": self.order_addr,
            "location": self.location_addr,
            "matching": self.matching_addr,
            "tracking": self.tracking_addr,
        }


@dataclass(frozen=True)
class Settings:
    """Everything one service process needs, read once in ``main()``."""

    #: Which service this process runs (order, location, matching, tracking, edge).
    service: str
    #: Listening and stopping.
    server: ServerSettings
    #: PostgreSQL and Redis.
    stores: StoreSettings = field(default_factory=StoreSettings)
    #: Sessions and service identity.
    auth: AuthSettings = field(default_factory=AuthSettings)
    #: The other services.
    peers: PeerSettings = field(default_factory=PeerSettings)
    #: ``json`` for one JSON object per log line, ``text`` for people.
    log_format: str = "text"
    #: The root log level name.
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, service: str, env: Mapping[str, str] | None = None) -> Settings:
        """Reads every setting for ``service`` from ``env`` (default: ``os.environ``)."""
        env = os.environ if env is None else env
        return cls(
            service=service,
            server=ServerSettings.from_env(env, service),
            stores=StoreSettings.from_env(env),
            auth=AuthSettings.from_env(env),
            peers=PeerSettings.from_env(env),
            log_format=env_str(env, "LOG_FORMAT", cls.log_format),
            log_level=env_str(env, "LOG_LEVEL", cls.log_level).upper(),
        )
