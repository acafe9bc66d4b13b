"""``python -m matching_svc`` runs matching_svc."""

import asyncio

from matching_svc.server import main

asyncio.run(main())
