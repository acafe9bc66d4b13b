"""``python -m location_svc`` runs location_svc."""

from location_svc.server import main
from mesh.server import run_main

run_main(main)
