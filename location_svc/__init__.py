"""location_svc: the driver GPS stream, the H3-sharded geo index, presence and history."""
