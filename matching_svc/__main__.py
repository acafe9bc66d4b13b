"""``python -m matching_svc`` runs matching_svc."""

from matching_svc.server import main
from mesh.server import run_main

run_main(main)
