"""tracking_svc's plain domain logic: travel times, routes, estimates (no grpc, redis or SQL)."""
