"""``python -m order_svc`` runs order_svc."""

import asyncio

from order_svc.server import main

asyncio.run(main())
