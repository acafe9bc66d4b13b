"""``python -m tracking_svc`` runs tracking_svc."""

import asyncio

from tracking_svc.server import main

asyncio.run(main())
