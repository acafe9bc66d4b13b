"""Generate the Python gRPC code in gen/ from protos/, or check that gen/ is up to date.

Besides the modules, gen/delivery/descriptors.binpb holds every contract as a FileDescriptorSet
with its imports and source info (the comments), which server reflection serves: the modules'
own descriptors carry no comments.

Usage, from anywhere:

    python scripts/gen_protos.py           # regenerate gen/
    python scripts/gen_protos.py --check   # exit 1 if gen/ differs from a fresh generation
"""

from __future__ import annotations

import argparse
import importlib.resources
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos"
GEN_DIR = ROOT / "gen"
IGNORED_DIRS = frozenset({"__pycache__"})
#: The FileDescriptorSet reflection serves, relative to gen/ (package ``delivery``).
DESCRIPTOR_SET = Path("delivery") / "descriptors.binpb"


def well_known_include() -> Path:
    """Return the directory of the well-known .proto files bundled with grpc_tools."""
    return Path(str(importlib.resources.files("grpc_tools") / "_proto"))


def proto_files() -> list[str]:
    """Return every .proto file under protos/, relative to it, sorted."""
    return sorted(p.relative_to(PROTO_DIR).as_posix() for p in PROTO_DIR.rglob("*.proto"))


def generate(out_dir: Path) -> None:
    """Run protoc over every proto into out_dir, with the descriptor set, and add the package
    __init__.py files."""
    files = proto_files()
    if not files:
        raise SystemExit(f"no .proto files under {PROTO_DIR}")
    (out_dir / DESCRIPTOR_SET).parent.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{well_known_include()}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--descriptor_set_out={out_dir / DESCRIPTOR_SET}",
        "--include_imports",
        "--include_source_info",
        *(str(PROTO_DIR / name) for name in files),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for directory in sorted({p.parent for p in out_dir.rglob("*.py")}):
        while directory != out_dir:
            (directory / "__init__.py").touch()
            directory = directory.parent


def tree(base: Path) -> dict[str, bytes]:
    """Map every file under base (skipping __pycache__) to its bytes, by relative path."""
    if not base.is_dir():
        return {}
    return {
        p.relative_to(base).as_posix(): p.read_bytes()
        for p in sorted(base.rglob("*"))
        if p.is_file() and not IGNORED_DIRS.intersection(p.relative_to(base).parts)
    }


def differences(expected: dict[str, bytes], actual: dict[str, bytes]) -> list[str]:
    """Describe every path that is missing, extra or different in actual."""
    lines = []
    for path in sorted(expected.keys() | actual.keys()):
        if path not in actual:
            lines.append(f"missing: gen/{path}")
        elif path not in expected:
            lines.append(f"extra: gen/{path}")
        elif expected[path] != actual[path]:
            lines.append(f"differs: gen/{path}")
    return lines


def replace_gen(fresh: Path) -> None:
    """Replace the contents of gen/ with the freshly generated tree."""
    GEN_DIR.mkdir(exist_ok=True)
    for child in GEN_DIR.iterdir():
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()
    for child in sorted(fresh.iterdir()):
        shutil.move(str(child), GEN_DIR / child.name)


def main(argv: list[str] | None = None) -> int:
    """Generate into a temporary directory, then replace or check gen/."""
    parser = argparse.ArgumentParser(description="Generate gen/ from protos/ with grpc_tools.")
    parser.add_argument(
        "--check",
        action="store_true",
        help="compare a fresh generation with gen/ and exit 1 if they differ",
    )
    options = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gen_protos_") as tmp:
        fresh = Path(tmp)
        generate(fresh)
        if options.check:
            problems = differences(tree(fresh), tree(GEN_DIR))
            if problems:
                print("gen/ is out of date; run scripts/gen_protos.py:", file=sys.stderr)
                for line in problems:
                    print(f"  {line}", file=sys.stderr)
                return 1
            print("gen/ is up to date")
            return 0
        replace_gen(fresh)
    print(f"generated {len(proto_files())} proto files into {GEN_DIR.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
