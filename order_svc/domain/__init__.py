"""Plain typed domain logic of order_svc: no gRPC, no asyncpg, no Redis."""
