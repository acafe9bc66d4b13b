-- 0004_dispatch: courier offers and the durable dispatch state.

-- One offer of one order to one driver. Sequential matching: an order has at
-- most one live offer at a time, and a driver holds at most one live offer.
-- A driver may be re-offered the same order later (after a reassignment), so
-- there is deliberately no UNIQUE (order_id, driver_id).
CREATE TABLE IF NOT EXISTS driver_offers (
  id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  order_id       uuid NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
  driver_id      uuid NOT NULL REFERENCES drivers (id) ON DELETE CASCADE,
  status         text NOT NULL DEFAULT 'pending'
                 CONSTRAINT driver_offers_status_check
                 CHECK (status IN ('pending', 'accepted', 'declined', 'expired', 'withdrawn')),
  attempt        integer NOT NULL DEFAULT 1 CONSTRAINT driver_offers_attempt_positive CHECK (attempt >= 1),
  score          double precision,
  score_factors  jsonb,    -- per-factor breakdown of score, for tuning/audit
  stacked        boolean NOT NULL DEFAULT false,  -- offered on top of an active order
  offered_at     timestamptz NOT NULL DEFAULT now(),
  expires_at     timestamptz NOT NULL,
  responded_at   timestamptz,  -- set on accept/decline
  decline_reason text,
  CONSTRAINT driver_offers_expires_after_offered CHECK (expires_at > offered_at),
  CONSTRAINT driver_offers_response_has_time
    CHECK (status NOT IN ('accepted', 'declined') OR responded_at IS NOT NULL)
);
-- Resolve an offer with "UPDATE ... WHERE id = $1 AND status = 'pending'".
-- At most one pending offer per order and per driver, one accepted per order:
CREATE UNIQUE INDEX IF NOT EXISTS driver_offers_one_pending_per_order
  ON driver_offers (order_id) WHERE status = 'pending';
CREATE UNIQUE INDEX IF NOT EXISTS driver_offers_one_pending_per_driver
  ON driver_offers (driver_id) WHERE status = 'pending';
CREATE UNIQUE INDEX IF NOT EXISTS driver_offers_one_accepted_per_order
  ON driver_offers (order_id) WHERE status = 'accepted';
-- Durable timeout sweeper: pending offers past expires_at.
CREATE INDEX IF NOT EXISTS driver_offers_pending_expires_idx
  ON driver_offers (expires_at) WHERE status = 'pending';
-- Acceptance rate over a sliding window; also serves the FK from drivers.
CREATE INDEX IF NOT EXISTS driver_offers_driver_offered_idx ON driver_offers (driver_id, offered_at);
-- All offers of an order (history, exclusion list rebuild).
CREATE INDEX IF NOT EXISTS driver_offers_order_idx ON driver_offers (order_id, offered_at);

-- Durable dispatch state per order, so a restarted matching service resumes
-- where it stopped. Workers claim due jobs with
--   SELECT ... FROM dispatch_jobs
--    WHERE state IN ('queued', 'waiting_for_retry') AND next_attempt_at <= now()
--    ORDER BY next_attempt_at FOR UPDATE SKIP LOCKED LIMIT n;
-- and may use lease_owner/lease_expires_at to hold a job across transactions.
CREATE TABLE IF NOT EXISTS dispatch_jobs (
  order_id            uuid PRIMARY KEY REFERENCES orders (id) ON DELETE CASCADE,
  state               text NOT NULL DEFAULT 'queued'
                      CONSTRAINT dispatch_jobs_state_check CHECK (state IN (
                        'queued', 'searching', 'offered', 'assigned',
                        'waiting_for_retry', 'exhausted', 'cancelled')),
  attempts            integer NOT NULL DEFAULT 0 CONSTRAINT dispatch_jobs_attempts_nonneg CHECK (attempts >= 0),
  max_attempts        integer NOT NULL DEFAULT 10 CONSTRAINT dispatch_jobs_max_attempts_positive CHECK (max_attempts > 0),
  -- When the job is next due. For a fresh order this can be in the future
  -- ("dispatch follows preparation": ready time minus courier travel time).
  next_attempt_at     timestamptz NOT NULL DEFAULT now(),
  -- Drivers that declined/expired/were withdrawn for this order; skipped on retry.
  excluded_driver_ids uuid[] NOT NULL DEFAULT '{}',
  last_error          text,
  lease_owner         text,         -- matching-service instance holding the job
  lease_expires_at    timestamptz,  -- lease is void after this; another instance may take over
  created_at          timestamptz NOT NULL DEFAULT now(),
  updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS dispatch_jobs_state_next_idx ON dispatch_jobs (state, next_attempt_at);
CREATE OR REPLACE TRIGGER dispatch_jobs_set_updated_at
  BEFORE UPDATE ON dispatch_jobs FOR EACH ROW EXECUTE FUNCTION set_updated_at();
