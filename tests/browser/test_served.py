"""The edge serves the built pages as they are committed: the index, each page with the files
it loads, and the streets its maps draw (no browser needed for these)."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from edge.app import EdgeConfig, build_app

PAGES = ("customer.html", "merchant.html", "ops.html")


@pytest.fixture
async def edge_url() -> AsyncIterator[str]:
    app, _ = build_app(EdgeConfig(routes={}))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_the_index_links_every_page_and_each_page_its_files(edge_url: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(edge_url + "/") as index:
            assert index.status == 200
            assert index.content_type == "text/html"
            assert index.headers["Cache-Control"] == "no-cache"
            text = await index.text()
        assert all(f'href="/{page}"' in text for page in PAGES)
        for page in PAGES:
            async with session.get(f"{edge_url}/{page}") as reply:
                assert reply.status == 200, page
                html = await reply.text()
            loads = re.findall(r'(?:src|href)="/([^"/]+\.(?:js|css))"', html)
            assert f"{page.removesuffix('.html')}.js" in loads and "style.css" in loads, page
            for name in loads:
                async with session.get(f"{edge_url}/{name}") as asset:
                    assert asset.status == 200, name
                    kind = "javascript" if name.endswith(".js") else "css"
                    assert kind in asset.content_type, (name, asset.content_type)
        async with session.get(edge_url + "/nothing-here.js") as missing:
            assert missing.status == 404


async def test_the_maps_streets_are_central_helsinki_as_geojson(edge_url: str) -> None:
    async with aiohttp.ClientSession() as session, session.get(edge_url + "/roads.json") as reply:
        assert reply.status == 200
        roads = json.loads(await reply.read())
    assert roads["type"] == "FeatureCollection"
    assert "OpenStreetMap" in roads["attribution"]
    points = [
        point
        for feature in roads["features"]
        for line in feature["geometry"]["coordinates"]
        for point in line
    ]
    assert len(roads["features"]) > 50 and len(points) > 1000
    # GeoJSON order (longitude first), all within central Helsinki.
    assert all(24.9 < lng < 25.0 and 60.15 < lat < 60.19 for lng, lat in points)
    assert {f["properties"]["highway"] for f in roads["features"]} >= {"primary", "residential"}
