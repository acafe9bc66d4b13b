"""``python -m tracking_svc`` runs tracking_svc."""

from mesh.server import run_main
from tracking_svc.server import main

run_main(main)
