"""Runs the edge: an aiohttp server that stops gracefully on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Mapping

from aiohttp import web

from edge.app import EdgeConfig, build_app
from mesh.logs import configure_logging
from mesh.server import announce
from mesh.settings import PREFIX, Settings, env_int, env_positive, env_str

logger = logging.getLogger(__name__)


def edge_config(settings: Settings, env: Mapping[str, str] | None = None) -> EdgeConfig:
    """Routes each proto package to the service that implements it; the CORS origins, request
    cap, unary deadline, body-read deadline and idle timeout from ``DELIVERY_EDGE_*``."""
    env = os.environ if env is None else env
    if env_str(env, "EDGE_ALLOW_ORIGIN", ""):
        # The old single value was '*' by default; silently ignoring it would hide a change.
        raise ValueError(
            f"{PREFIX}EDGE_ALLOW_ORIGIN is replaced by {PREFIX}EDGE_ALLOW_ORIGINS, a comma-"
            "separated list of origins ('*' is not accepted)"
        )
    origins = env_str(env, "EDGE_ALLOW_ORIGINS", "")
    max_request_bytes = env_int(env, "EDGE_MAX_REQUEST_BYTES", 1024 * 1024)
    if max_request_bytes <= 0:
        raise ValueError(f"{PREFIX}EDGE_MAX_REQUEST_BYTES must be positive")
    peers = settings.peers
    return EdgeConfig(
        routes={
            "delivery.order.v1": peers.order_addr,
            "delivery.location.v1": peers.location_addr,
            "delivery.matching.v1": peers.matching_addr,
            "delivery.tracking.v1": peers.tracking_addr,
        },
        allow_origins=frozenset(o.strip() for o in origins.split(",") if o.strip()),
        default_timeout_s=env_positive(env, "EDGE_UNARY_TIMEOUT_S", 30.0),
        max_request_bytes=max_request_bytes,
        body_timeout_s=env_positive(env, "EDGE_BODY_TIMEOUT_S", 10.0),
        idle_timeout_s=env_positive(env, "EDGE_IDLE_TIMEOUT_S", 75.0),
    )


async def main() -> None:
    """Serves until SIGTERM or SIGINT, then drains for the configured grace period."""
    settings = Settings.from_env("edge")
    configure_logging("edge", settings.log_level, settings.log_format)
    app, edge = build_app(edge_config(settings))
    # The mesh's own access logging is enough; aiohttp's per-request line is off.
    runner = web.AppRunner(app, shutdown_timeout=settings.server.grace_s, access_log=None)
    await runner.setup()
    host, _, port = settings.server.listen.rpartition(":")
    site = web.TCPSite(runner, host or "0.0.0.0", int(port))
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    logger.info("edge serving gRPC-web on port %d", bound)
    announce("edge", bound)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    edge.serving = False
    await runner.cleanup()
    logger.info("edge stopped")
