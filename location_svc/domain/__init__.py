"""Plain typed domain logic of location_svc: no gRPC, no Redis, no asyncpg."""
