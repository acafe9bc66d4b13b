"""Runs the edge: an aiohttp server that stops gracefully on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from aiohttp import web

from edge.app import EdgeConfig, build_app
from mesh.logs import configure_logging
from mesh.server import announce
from mesh.settings import Settings, env_str

logger = logging.getLogger(__name__)


def edge_config(settings: Settings, allow_origin: str = "*") -> EdgeConfig:
    """Routes each proto package to the service that implements it."""
    peers = settings.peers
    return EdgeConfig(
        routes={
            "delivery.order.v1": peers.order_addr,
            "delivery.location.v1": peers.location_addr,
            "delivery.matching.v1": peers.matching_addr,
            "delivery.tracking.v1": peers.tracking_addr,
        },
        allow_origin=allow_origin,
    )


async def main() -> None:
    """Serves until SIGTERM or SIGINT, then drains for the configured grace period."""
    settings = Settings.from_env("edge")
    configure_logging("edge", settings.log_level, settings.log_format)
    app, edge = build_app(edge_config(settings, env_str(os.environ, "EDGE_ALLOW_ORIGIN", "*")))
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
