"""``python -m location_svc`` runs location_svc (``DELIVERY_LOCATION_WORKERS`` processes)."""

from location_svc.server import main
from mesh.workers import serve

serve("location", "location_svc", main)
