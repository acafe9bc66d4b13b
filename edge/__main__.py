"""``python -m edge`` runs the gRPC-web edge."""

import asyncio

from edge.server import main
from mesh.server import die_with_parent

die_with_parent()
asyncio.run(main())
