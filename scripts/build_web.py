"""Build the edge's web pages, or check that the committed build is current.

The pages are TypeScript under ``edge/web/src`` using a real gRPC-web client
(``@connectrpc/connect-web``) over message code that ``protoc-gen-es`` generates
from ``protos/`` into ``edge/web/gen``. esbuild bundles each page's entry
point (``edge/web/src/pages/<name>.ts``) into ``edge/static/<name>.js`` (and
``<name>.css`` when the page imports CSS); the files under ``edge/web/public``
are copied beside them, and the maps' streets are written beside them too
(``roads.json``: GeoJSON made from tracking_svc's road network of central
Helsinki, so the maps load no tiles from the internet). Both ``edge/web/gen``
and ``edge/static`` are committed, so running the mesh needs no Node.

Usage, from anywhere, after ``npm ci`` at the repository root:

    python scripts/build_web.py           # regenerate edge/web/gen and rebuild edge/static
    python scripts/build_web.py --check   # exit 1 if either differs from a fresh build
"""

from __future__ import annotations

import argparse
import gzip
import importlib.resources
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos"
WEB_DIR = ROOT / "edge" / "web"
GEN_DIR = WEB_DIR / "gen"
PAGES_DIR = WEB_DIR / "src" / "pages"
PUBLIC_DIR = WEB_DIR / "public"
STATIC_DIR = ROOT / "edge" / "static"
BIN = ROOT / "node_modules" / ".bin"
ROADS = ROOT / "tracking_svc" / "data" / "helsinki_roads.json.gz"
#: Decimal places of the streets' coordinates: 1e-5 degrees is about a metre.
ROAD_DIGITS = 5


def generate(out_dir: Path) -> None:
    """Runs protoc with protoc-gen-es over every proto into ``out_dir``."""
    plugin = BIN / "protoc-gen-es"
    if not plugin.exists():
        raise SystemExit(f"{plugin} is missing: run `npm ci` at {ROOT}")
    files = sorted(p.relative_to(PROTO_DIR).as_posix() for p in PROTO_DIR.rglob("*.proto"))
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{importlib.resources.files('grpc_tools') / '_proto'}",
        f"--plugin=protoc-gen-es={plugin}",
        f"--es_out={out_dir}",
        "--es_opt=target=ts",
        *(str(PROTO_DIR / name) for name in files),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc (protoc-gen-es) failed")


def bundle(gen_dir: Path, out_dir: Path) -> None:
    """Bundles each page entry point, reading generated code from ``gen_dir``, into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = sorted(PAGES_DIR.glob("*.ts"))
    if entries:
        command = [
            str(BIN / "esbuild"),
            *(str(entry) for entry in entries),
            "--bundle",
            "--minify",
            "--format=esm",
            "--target=es2020",
            "--legal-comments=none",
            "--log-level=warning",
            f"--alias:@gen={gen_dir}",
            "--loader:.png=file",
            "--asset-names=[name]",
            f"--outdir={out_dir}",
        ]
        # The generated code may sit in a temporary directory: its imports resolve from here.
        env = {**os.environ, "NODE_PATH": str(ROOT / "node_modules")}
        subprocess.run(command, check=True, cwd=ROOT, env=env)
    if PUBLIC_DIR.is_dir():
        for path in sorted(PUBLIC_DIR.rglob("*")):
            if path.is_file():
                target = out_dir / path.relative_to(PUBLIC_DIR)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
    (out_dir / "roads.json").write_text(road_map(ROADS), encoding="utf-8")


def road_map(source: Path) -> str:
    """The streets of a road network file as compact GeoJSON, the same bytes every time.

    Each street (highway class and name) is one MultiLineString; its two-way edges count once
    and its segments are chained into as few lines as a greedy walk finds, so the file stays
    small (a point per junction or bend, a metre's precision).
    """
    data = json.loads(gzip.decompress(source.read_bytes()))
    node_at = {n[0]: (round(n[2], ROAD_DIGITS), round(n[1], ROAD_DIGITS)) for n in data["nodes"]}
    field = {name: i for i, name in enumerate(data["edge_fields"])}
    streets: dict[tuple[str, str], set[tuple[int, int]]] = {}
    for edge in data["edges"]:
        a, b = sorted((edge[field["from"]], edge[field["to"]]))
        if a != b:
            highway = str(edge[field["highway"]]).removesuffix("_link")
            streets.setdefault((highway, edge[field["name"]] or ""), set()).add((a, b))
    features = [
        {
            "type": "Feature",
            "properties": {"highway": highway, "name": name},
            "geometry": {
                "type": "MultiLineString",
                "coordinates": [[list(node_at[n]) for n in chain] for chain in _chains(segments)],
            },
        }
        for (highway, name), segments in sorted(streets.items())
    ]
    collection = {
        "type": "FeatureCollection",
        "attribution": data.get("attribution", ""),
        "license": data.get("license", ""),
        "features": features,
    }
    return json.dumps(collection, separators=(",", ":"), ensure_ascii=False) + "\n"


def _chains(segments: set[tuple[int, int]]) -> list[list[int]]:
    """Walks ``segments`` (node pairs) into lines, each segment used once, deterministically."""
    neighbours: dict[int, list[int]] = {}
    for a, b in sorted(segments):
        neighbours.setdefault(a, []).append(b)
        neighbours.setdefault(b, []).append(a)
    used: set[tuple[int, int]] = set()
    chains = []
    # Line ends first (odd degree), so a street becomes few long lines rather than many stubs.
    starts = sorted(neighbours, key=lambda n: (len(neighbours[n]) % 2 == 0, n))
    for start in starts:
        while True:
            chain, here = [start], start
            while True:
                step = next(
                    (n for n in neighbours[here] if (min(here, n), max(here, n)) not in used), None
                )
                if step is None:
                    break
                used.add((min(here, step), max(here, step)))
                chain.append(step)
                here = step
            if len(chain) == 1:
                break
            chains.append(chain)
    return chains


def tree(base: Path) -> dict[str, bytes]:
    """Maps every file under ``base`` to its bytes, by relative path."""
    if not base.is_dir():
        return {}
    return {p.relative_to(base).as_posix(): p.read_bytes() for p in base.rglob("*") if p.is_file()}


def differences(label: str, expected: dict[str, bytes], actual: dict[str, bytes]) -> list[str]:
    """Every path missing, extra or different in ``actual``."""
    lines = []
    for path in sorted(expected.keys() | actual.keys()):
        if path not in actual:
            lines.append(f"missing: {label}/{path}")
        elif path not in expected:
            lines.append(f"extra: {label}/{path}")
        elif expected[path] != actual[path]:
            lines.append(f"differs: {label}/{path}")
    return lines


def replace(target: Path, fresh: Path) -> None:
    """Replaces ``target`` with the freshly built tree."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(fresh, target)


def main(argv: list[str] | None = None) -> int:
    """Builds into a temporary directory, then replaces or checks the committed trees."""
    parser = argparse.ArgumentParser(description="Build the edge's web pages.")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the committed build is not current"
    )
    options = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="build_web_") as tmp:
        gen, static = Path(tmp) / "gen", Path(tmp) / "static"
        generate(gen)
        bundle(gen, static)
        if options.check:
            problems = differences("edge/web/gen", tree(gen), tree(GEN_DIR))
            problems += differences("edge/static", tree(static), tree(STATIC_DIR))
            if problems:
                print("the web build is stale; run scripts/build_web.py:", file=sys.stderr)
                for line in problems:
                    print(f"  {line}", file=sys.stderr)
                return 1
            print("edge/web/gen and edge/static are up to date")
            return 0
        replace(GEN_DIR, gen)
        replace(STATIC_DIR, static)
    print(f"generated {GEN_DIR.relative_to(ROOT)}/ and built {STATIC_DIR.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
