"""Build the edge's web pages, or check that the committed build is current.

The pages are TypeScript under ``edge/web/src`` using a real gRPC-web client
(``@connectrpc/connect-web``) over message code that ``protoc-gen-es`` generates
from ``protos/`` into ``edge/web/gen``. esbuild bundles each page's entry
point (``edge/web/src/pages/<name>.ts``) into ``edge/static/<name>.js`` (and
``<name>.css`` when the page imports CSS); the files under ``edge/web/public``
are copied beside them. Both ``edge/web/gen`` and ``edge/static`` are
committed, so running the mesh needs no Node.

Usage, from anywhere, after ``npm ci`` at the repository root:

    python scripts/build_web.py           # regenerate edge/web/gen and rebuild edge/static
    python scripts/build_web.py --check   # exit 1 if either differs from a fresh build
"""

from __future__ import annotations

import argparse
import importlib.resources
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
