"""``python -m location_svc`` runs location_svc."""

import asyncio

from location_svc.server import main

asyncio.run(main())
