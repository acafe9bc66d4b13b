-- 0013_outbox_parking: one outbox row that can never be published no longer stalls the rows
-- behind it. A row that fails on its own (its stream name or headers are malformed, Redis
-- refuses its entry) counts `failures`; after the relay's limit it is parked: `parked_at` is
-- set and the relay skips it, leaving it with its `last_error` for an operator. Failures of a
-- whole batch (Redis or PostgreSQL down) are not the rows' fault and do not count.
-- To retry a parked row: UPDATE outbox SET parked_at = NULL, failures = 0 WHERE id = ...;
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS failures integer NOT NULL DEFAULT 0
  CONSTRAINT outbox_failures_nonneg CHECK (failures >= 0);
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS parked_at timestamptz;
-- The relay's scan: unpublished and not parked, in id order.
DROP INDEX IF EXISTS outbox_unpublished_idx;
CREATE INDEX IF NOT EXISTS outbox_unpublished_idx ON outbox (id)
  WHERE published_at IS NULL AND parked_at IS NULL;
-- Operators look parked rows up by this.
CREATE INDEX IF NOT EXISTS outbox_parked_idx ON outbox (parked_at) WHERE parked_at IS NOT NULL;
