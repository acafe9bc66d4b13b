"""Extract central Helsinki's drivable road network into tracking_svc/data/helsinki_roads.json.gz.

The source is the OpenStreetMap extract of central Helsinki that the `pyrosm` package ships
(`get_data("helsinki_pbf")`, read offline). pyrosm brings geopandas and friends, so it is not a
dependency of the project: run this script from a scratch virtual environment and commit the
output, which is all the services read:

    python3.11 -m venv /tmp/roadsvenv && /tmp/roadsvenv/bin/pip install pyrosm
    /tmp/roadsvenv/bin/python scripts/build_road_network.py            # writes the data file
    /tmp/roadsvenv/bin/python scripts/build_road_network.py --out x.gz # somewhere else

Map data © OpenStreetMap contributors, available under the Open Database License (ODbL 1.0,
https://opendatacommons.org/licenses/odbl/); the output is a derived database under the same
license.

The file is gzipped JSON with column-oriented rows to stay small: `nodes` rows follow
`node_fields` (OSM node id, lat, lng) and `edges` rows follow `edge_fields` (from and to OSM node
ids, length in meters, the speed limit in km/h or null, the highway class, the street name or
null, the OSM way id). Edges are directed: a two-way street gives two edges, `oneway=yes` (or a
roundabout) one, `oneway=-1` one against the way's drawing direction.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "tracking_svc" / "data" / "helsinki_roads.json.gz"

NODE_FIELDS = ["id", "lat", "lng"]
EDGE_FIELDS = ["from", "to", "length_m", "maxspeed_kmh", "highway", "name", "way_id"]

_FORWARD = {"yes", "true", "1"}
_BACKWARD = {"-1", "reverse"}


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def parse_maxspeed(value: Any) -> int | None:
    """Return a speed limit in km/h from an OSM `maxspeed` value, or None if it has no number."""
    if _missing(value):
        return None
    match = re.match(r"\s*(\d+(?:\.\d+)?)\s*(mph)?", str(value))
    if match is None:
        return None
    speed = float(match.group(1))
    if match.group(2):
        speed *= 1.609344
    return round(speed) if speed > 0 else None


def directions(oneway: Any, tags: Any) -> tuple[bool, bool]:
    """Return whether the way is drivable (forward, backward) from its `oneway` and other tags."""
    value = "" if _missing(oneway) else str(oneway).strip().lower()
    if value in _FORWARD:
        return True, False
    if value in _BACKWARD:
        return False, True
    if value == "" and not _missing(tags):
        extra = json.loads(tags) if isinstance(tags, str) else dict(tags)
        if extra.get("junction") in {"roundabout", "circular"}:
            return True, False
    return True, True


def build(out: Path) -> dict[str, int]:
    """Read the pyrosm extract and write the compact file; return counts for the log line."""
    from pyrosm import OSM, get_data  # the scratch environment's; see the module docstring

    nodes, edges = OSM(get_data("helsinki_pbf")).get_network(network_type="driving", nodes=True)
    used: set[int] = set()
    rows: list[list[Any]] = []
    for edge in edges.itertuples(index=False):
        forward, backward = directions(edge.oneway, edge.tags)
        u, v = int(edge.u), int(edge.v)
        common = [
            round(float(edge.length), 1),
            parse_maxspeed(edge.maxspeed),
            str(edge.highway),
            None if _missing(edge.name) else str(edge.name),
            int(edge.id),
        ]
        if forward:
            rows.append([u, v, *common])
        if backward:
            rows.append([v, u, *common])
        used.update((u, v))
    node_rows = [
        [int(node.id), round(float(node.lat), 7), round(float(node.lon), 7)]
        for node in nodes.itertuples(index=False)
        if int(node.id) in used
    ]
    node_rows.sort()
    rows.sort(key=lambda row: (row[6], row[0], row[1]))
    payload = {
        "source": "pyrosm helsinki_pbf (central Helsinki), driving network",
        "attribution": "© OpenStreetMap contributors",
        "license": "ODbL-1.0",
        "node_fields": NODE_FIELDS,
        "nodes": node_rows,
        "edge_fields": EDGE_FIELDS,
        "edges": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    # mtime=0 keeps the output byte-identical between runs, so a rebuild shows no diff.
    with out.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        gz.write(data)
    return {"nodes": len(node_rows), "edges": len(rows), "bytes": out.stat().st_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the file")
    args = parser.parse_args()
    counts = build(args.out)
    print(
        f"{args.out}: {counts['nodes']} nodes, {counts['edges']} directed edges, "
        f"{counts['bytes']} bytes"
    )


if __name__ == "__main__":
    main()
