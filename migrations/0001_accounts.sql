-- 0001_accounts: shared helper functions, users and drivers.
-- Applied once, inside a transaction, by the project's migration runner.
-- Sessions live in Redis, so there is deliberately no sessions table.

-- Keeps updated_at current on every UPDATE. If the statement sets updated_at
-- itself (tests that age a row, backfills) that value is kept.
CREATE OR REPLACE FUNCTION set_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at THEN
    NEW.updated_at := now();
  END IF;
  RETURN NEW;
END
$$;

-- Rejects UPDATE on append-only audit tables (order_status_history,
-- problem_reports). DELETE is still allowed so retention can remove rows.
CREATE OR REPLACE FUNCTION forbid_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'table % is append-only', TG_TABLE_NAME
    USING ERRCODE = 'object_not_in_prerequisite_state';
END
$$;

-- Every account: customers, drivers, merchant owners and admins.
CREATE TABLE IF NOT EXISTS users (
  id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  -- Stored lowercased (the CHECK enforces it) so the unique index on
  -- lower(email) and a plain equality lookup agree.
  email         text NOT NULL
                CONSTRAINT users_email_lowercase CHECK (email = lower(email))
                CONSTRAINT users_email_shape CHECK (position('@' IN email) > 1 AND length(email) <= 254),
  password_hash text NOT NULL,
  name          text NOT NULL CONSTRAINT users_name_length CHECK (length(name) BETWEEN 1 AND 200),
  phone         text CONSTRAINT users_phone_length CHECK (length(phone) <= 32),
  role          text NOT NULL
                CONSTRAINT users_role_check CHECK (role IN ('customer', 'driver', 'merchant', 'admin')),
  -- Rating of this user as a customer, given by drivers. NULL until rated.
  rating_avg    numeric(3,2) CONSTRAINT users_rating_avg_range CHECK (rating_avg BETWEEN 1 AND 5),
  rating_count  integer NOT NULL DEFAULT 0 CONSTRAINT users_rating_count_nonneg CHECK (rating_count >= 0),
  created_at    timestamptz NOT NULL DEFAULT now(),
  updated_at    timestamptz NOT NULL DEFAULT now()
);
-- Case-insensitive uniqueness. Upserts: ON CONFLICT ((lower(email))).
CREATE UNIQUE INDEX IF NOT EXISTS users_email_lower_key ON users (lower(email));
CREATE INDEX IF NOT EXISTS users_role_idx ON users (role);
CREATE OR REPLACE TRIGGER users_set_updated_at
  BEFORE UPDATE ON users FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- Driver profile, 1:1 with users (same id). Live position and presence are in
-- Redis; this is the durable profile and capacity counter.
CREATE TABLE IF NOT EXISTS drivers (
  id                 uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
  vehicle_type       text NOT NULL
                     CONSTRAINT drivers_vehicle_type_check CHECK (vehicle_type IN ('bicycle', 'motorcycle', 'car', 'van')),
  license_plate      text CONSTRAINT drivers_license_plate_length CHECK (length(license_plate) <= 20),
  status             text NOT NULL DEFAULT 'offline'
                     CONSTRAINT drivers_status_check CHECK (status IN ('offline', 'available', 'busy')),
  rating_avg         numeric(3,2) CONSTRAINT drivers_rating_avg_range CHECK (rating_avg BETWEEN 1 AND 5),
  rating_count       integer NOT NULL DEFAULT 0 CONSTRAINT drivers_rating_count_nonneg CHECK (rating_count >= 0),
  total_deliveries   integer NOT NULL DEFAULT 0 CONSTRAINT drivers_total_deliveries_nonneg CHECK (total_deliveries >= 0),
  -- Orders currently assigned and not yet delivered/cancelled. Increment with
  -- a guarded UPDATE (... WHERE active_order_count < max_active_orders) so
  -- stacking can never exceed capacity. Not CHECKed against max_active_orders
  -- so an admin can lower the cap while a driver is mid-delivery.
  active_order_count integer NOT NULL DEFAULT 0 CONSTRAINT drivers_active_order_count_nonneg CHECK (active_order_count >= 0),
  max_active_orders  integer NOT NULL DEFAULT 2 CONSTRAINT drivers_max_active_orders_range CHECK (max_active_orders BETWEEN 1 AND 10),
  created_at         timestamptz NOT NULL DEFAULT now(),
  updated_at         timestamptz NOT NULL DEFAULT now()
);
-- Acceptance rate is computed from driver_offers over a sliding window
-- (index driver_offers_driver_offered_idx in 0004), not stored here.
CREATE INDEX IF NOT EXISTS drivers_status_idx ON drivers (status) WHERE status <> 'offline';
CREATE OR REPLACE TRIGGER drivers_set_updated_at
  BEFORE UPDATE ON drivers FOR EACH ROW EXECUTE FUNCTION set_updated_at();
