"""``python -m order_svc`` runs order_svc."""

from mesh.server import run_main
from order_svc.server import main

run_main(main)
