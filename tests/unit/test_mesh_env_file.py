"""The shell variables ``delivery up`` leaves for operators in ``<data-dir>/mesh.env``."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

from mesh.cli import env_file_text, write_env_file


def test_the_env_file_sources_to_the_addresses_and_urls(tmp_path: Path) -> None:
    addresses = {"order": "127.0.0.1:41001", "location": "127.0.0.1:41002", "edge": "[::1]:41005"}
    url = "postgresql://postgres:it's $ecret@/delivery?host=/tmp/a b"
    env = {
        "DELIVERY_MATCHING_METRICS_LISTEN": "127.0.0.1:9103",
        "DELIVERY_ORDER_METRICS_LISTEN": "127.0.0.1:0",  # a port nobody can know: left out
        "DELIVERY_LOCATION_METRICS_LISTEN": "127.0.0.1:9104",
    }
    path = tmp_path / "data" / "mesh.env"
    write_env_file(path, env_file_text(addresses, url, env))

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    shown = subprocess.run(
        [
            "bash",
            "-c",
            'source "$1" && printf "%s|" "$ORDER" "$LOCATION" "$EDGE" "$DATABASE_URL" '
            '"$LOCATION_METRICS" "${ORDER_METRICS-unset}" "${MATCHING_METRICS-unset}"',
            "-",
            path,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # Only the services of the mesh are written: matching is not among these addresses.
    assert shown.split("|")[:-1] == [
        "127.0.0.1:41001",
        "127.0.0.1:41002",
        "[::1]:41005",
        url,
        "127.0.0.1:9104",
        "unset",
        "unset",
    ]
