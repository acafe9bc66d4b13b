-- 0007_retention: per-table retention policy read by the cleanup job.
-- hot_storage_days: kept in the primary tables; warm_storage_days: kept
-- (possibly archived, see orders.archived_at) before deletion. The cleanup job
-- sets last_cleanup_at. driver_location_history is trimmed with
-- drop_location_history_partitions_before(); the others with DELETEs on
-- their created_at / expires_at / published_at indexes.
CREATE TABLE IF NOT EXISTS retention_policies (
  table_name        text PRIMARY KEY,
  hot_storage_days  integer NOT NULL CONSTRAINT retention_policies_hot_positive CHECK (hot_storage_days > 0),
  warm_storage_days integer NOT NULL,
  archive_enabled   boolean NOT NULL DEFAULT true,
  last_cleanup_at   timestamptz,
  created_at        timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT retention_policies_warm_ge_hot CHECK (warm_storage_days >= hot_storage_days)
);

INSERT INTO retention_policies (table_name, hot_storage_days, warm_storage_days, archive_enabled)
VALUES
  ('orders',                  30, 365, true),
  ('driver_location_history',  7,  30, true),
  ('idempotency_keys',         1,   1, false),
  ('notifications',           30,  90, false),
  ('outbox',                   7,   7, false)
ON CONFLICT (table_name) DO NOTHING;
