"""``python -m edge`` runs the gRPC-web edge."""

import asyncio

from edge.server import main

asyncio.run(main())
