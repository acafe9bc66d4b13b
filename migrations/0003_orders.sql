-- 0003_orders: orders, their lines, history, proof of delivery, problem
-- reports, ratings and idempotency keys.

-- One customer order from one merchant.
-- Lifecycle (status): pending -> confirmed -> preparing -> ready_for_pickup
--   -> picked_up -> delivered, or -> cancelled from any non-terminal state.
-- Courier assignment is NOT a status: driver_id/assigned_at are set
-- independently so dispatch can run while the merchant prepares.
-- Every change is optimistic:
--   UPDATE orders SET status = $4, version = version + 1, ...
--    WHERE id = $1 AND status = $2 AND version = $3 RETURNING version;
-- zero rows means someone else won; re-read and decide.
CREATE TABLE IF NOT EXISTS orders (
  id                     uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  -- SET NULL (nullable) on all three parties: deleting an account must not
  -- delete the financial/audit record. Names and prices are snapshotted on
  -- order_items so the order stays readable.
  customer_id            uuid REFERENCES users (id) ON DELETE SET NULL,
  merchant_id            uuid REFERENCES merchants (id) ON DELETE SET NULL,
  driver_id              uuid REFERENCES drivers (id) ON DELETE SET NULL,
  status                 text NOT NULL DEFAULT 'pending'
                         CONSTRAINT orders_status_check CHECK (status IN (
                           'pending', 'confirmed', 'preparing', 'ready_for_pickup',
                           'picked_up', 'delivered', 'cancelled')),
  -- Optimistic-concurrency counter, bumped by every UPDATE (status change,
  -- driver assignment, ...). Also the sequence number clients use to order
  -- and resume order updates.
  version                bigint NOT NULL DEFAULT 1 CONSTRAINT orders_version_positive CHECK (version >= 1),
  delivery_address       text NOT NULL,
  delivery_lat           double precision NOT NULL CONSTRAINT orders_delivery_lat_range CHECK (delivery_lat BETWEEN -90 AND 90),
  delivery_lng           double precision NOT NULL CONSTRAINT orders_delivery_lng_range CHECK (delivery_lng BETWEEN -180 AND 180),
  currency_code          char(3) NOT NULL CONSTRAINT orders_currency_format CHECK (currency_code ~ '^[A-Z]{3}$'),
  subtotal_minor         bigint NOT NULL CONSTRAINT orders_subtotal_nonneg CHECK (subtotal_minor >= 0),
  delivery_fee_minor     bigint NOT NULL DEFAULT 0 CONSTRAINT orders_delivery_fee_nonneg CHECK (delivery_fee_minor >= 0),
  tip_minor              bigint NOT NULL DEFAULT 0 CONSTRAINT orders_tip_nonneg CHECK (tip_minor >= 0),
  total_minor            bigint NOT NULL,
  -- Handoff code the customer gives the courier; 4-6 digits.
  delivery_pin           text CONSTRAINT orders_delivery_pin_format CHECK (delivery_pin ~ '^[0-9]{4,6}$'),
  -- Snapshot of merchants.handoff_policy at order time.
  handoff_policy         text NOT NULL DEFAULT 'pin'
                         CONSTRAINT orders_handoff_policy_check CHECK (handoff_policy IN ('pin', 'photo', 'pin_or_photo')),
  estimated_prep_seconds integer CONSTRAINT orders_estimated_prep_positive CHECK (estimated_prep_seconds > 0),
  estimated_delivery_at  timestamptz,
  created_at             timestamptz NOT NULL DEFAULT now(),
  updated_at             timestamptz NOT NULL DEFAULT now(),
  confirmed_at           timestamptz,
  preparing_at           timestamptz,
  ready_at               timestamptz,
  assigned_at            timestamptz,  -- when driver_id was last set
  picked_up_at           timestamptz,
  delivered_at           timestamptz,
  cancelled_at           timestamptz,
  cancel_reason          text,
  cancelled_by_role      text CONSTRAINT orders_cancelled_by_role_check
                         CHECK (cancelled_by_role IN ('customer', 'driver', 'merchant', 'admin', 'system')),
  refund_minor           bigint NOT NULL DEFAULT 0 CONSTRAINT orders_refund_nonneg CHECK (refund_minor >= 0),
  cancellation_fee_minor bigint NOT NULL DEFAULT 0 CONSTRAINT orders_cancellation_fee_nonneg CHECK (cancellation_fee_minor >= 0),
  archived_at            timestamptz,  -- set once exported to cold storage
  retention_days         integer NOT NULL DEFAULT 90 CONSTRAINT orders_retention_days_positive CHECK (retention_days > 0),
  note                   text CONSTRAINT orders_note_length CHECK (length(note) <= 1000),
  CONSTRAINT orders_total_sum CHECK (total_minor = subtotal_minor + delivery_fee_minor + tip_minor),
  CONSTRAINT orders_refund_le_total CHECK (refund_minor <= total_minor),
  CONSTRAINT orders_cancellation_fee_le_total CHECK (cancellation_fee_minor <= total_minor),
  -- A terminal/handoff status must carry its timestamp: set both in the same UPDATE.
  CONSTRAINT orders_picked_up_has_time CHECK (status <> 'picked_up' OR picked_up_at IS NOT NULL),
  CONSTRAINT orders_delivered_has_time CHECK (status <> 'delivered' OR delivered_at IS NOT NULL),
  CONSTRAINT orders_cancelled_has_time CHECK (status <> 'cancelled' OR cancelled_at IS NOT NULL)
);
-- Customer / merchant order lists, newest first.
CREATE INDEX IF NOT EXISTS orders_customer_created_idx ON orders (customer_id, created_at DESC);
CREATE INDEX IF NOT EXISTS orders_merchant_created_idx ON orders (merchant_id, created_at DESC);
-- Merchant's live queue.
CREATE INDEX IF NOT EXISTS orders_merchant_active_idx ON orders (merchant_id, status)
  WHERE status IN ('pending', 'confirmed', 'preparing', 'ready_for_pickup', 'picked_up');
-- A driver's current orders. Query with "driver_id = $1 AND status IN (...)"
-- using a subset of this list so the planner can use the partial index.
CREATE INDEX IF NOT EXISTS orders_driver_active_idx ON orders (driver_id)
  WHERE driver_id IS NOT NULL
    AND status IN ('pending', 'confirmed', 'preparing', 'ready_for_pickup', 'picked_up');
-- A driver's delivery history; also serves the ON DELETE SET NULL from drivers.
-- Partial on driver_id IS NOT NULL so order placement (driver unset) skips it.
CREATE INDEX IF NOT EXISTS orders_driver_created_idx ON orders (driver_id, created_at DESC)
  WHERE driver_id IS NOT NULL;
-- Stuck-order sweeps: "status = 'preparing' AND updated_at < now() - '1 hour'".
CREATE INDEX IF NOT EXISTS orders_active_status_updated_idx ON orders (status, updated_at)
  WHERE status IN ('pending', 'confirmed', 'preparing', 'ready_for_pickup', 'picked_up');
-- Retention / archival scans and time-range analytics.
CREATE INDEX IF NOT EXISTS orders_created_idx ON orders (created_at);
CREATE OR REPLACE TRIGGER orders_set_updated_at
  BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- Lines of an order, snapshotted at order time (name and price as charged).
CREATE TABLE IF NOT EXISTS order_items (
  id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  order_id         uuid NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
  -- Reference only, no FK: menu items may be edited or deleted later and the
  -- snapshot below is what was sold (and no index is needed on this column).
  menu_item_id     uuid,
  name             text NOT NULL,
  quantity         integer NOT NULL CONSTRAINT order_items_quantity_range CHECK (quantity BETWEEN 1 AND 100),
  unit_price_minor bigint NOT NULL CONSTRAINT order_items_unit_price_nonneg CHECK (unit_price_minor >= 0),
  -- quantity * (unit_price_minor + sum of option deltas), computed by the app.
  line_total_minor bigint NOT NULL CONSTRAINT order_items_line_total_nonneg CHECK (line_total_minor >= 0),
  note             text CONSTRAINT order_items_note_length CHECK (length(note) <= 500)
);
CREATE INDEX IF NOT EXISTS order_items_order_idx ON order_items (order_id);

-- Options chosen on an order line, snapshotted like order_items.
CREATE TABLE IF NOT EXISTS order_item_options (
  id                bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
  order_item_id     uuid NOT NULL REFERENCES order_items (id) ON DELETE CASCADE,
  option_group_id   uuid,   -- reference only, no FK (see order_items.menu_item_id)
  option_id         uuid,   -- reference only, no FK
  group_name        text NOT NULL DEFAULT '',
  name              text NOT NULL,
  price_delta_minor bigint NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS order_item_options_item_idx ON order_item_options (order_item_id);

-- Append-only audit of status transitions (UPDATE is rejected by trigger).
CREATE TABLE IF NOT EXISTS order_status_history (
  id          bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
  order_id    uuid NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
  from_status text,  -- NULL for the creation row
  to_status   text NOT NULL CONSTRAINT order_status_history_to_status_check CHECK (to_status IN (
                'pending', 'confirmed', 'preparing', 'ready_for_pickup',
                'picked_up', 'delivered', 'cancelled')),
  -- orders.version after the transition. UNIQUE per order, so a retried
  -- transition cannot be recorded twice.
  version     bigint NOT NULL,
  -- No FK: the audit trail must survive account deletion.
  actor_id    uuid,
  actor_role  text NOT NULL CONSTRAINT order_status_history_actor_role_check
              CHECK (actor_role IN ('customer', 'driver', 'merchant', 'admin', 'system')),
  reason      text,
  created_at  timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT order_status_history_order_version_key UNIQUE (order_id, version)
);
CREATE OR REPLACE TRIGGER order_status_history_append_only
  BEFORE UPDATE ON order_status_history FOR EACH ROW EXECUTE FUNCTION forbid_update();

-- Proof of handoff, one per order: a matched PIN or a photo.
CREATE TABLE IF NOT EXISTS delivery_proofs (
  order_id     uuid PRIMARY KEY REFERENCES orders (id) ON DELETE CASCADE,
  kind         text NOT NULL CONSTRAINT delivery_proofs_kind_check CHECK (kind IN ('pin', 'photo')),
  photo        bytea CONSTRAINT delivery_proofs_photo_size CHECK (octet_length(photo) <= 5 * 1024 * 1024),
  content_type text CONSTRAINT delivery_proofs_content_type_check
               CHECK (content_type IN ('image/jpeg', 'image/png', 'image/webp', 'image/heic')),
  lat          double precision CONSTRAINT delivery_proofs_lat_range CHECK (lat BETWEEN -90 AND 90),
  lng          double precision CONSTRAINT delivery_proofs_lng_range CHECK (lng BETWEEN -180 AND 180),
  captured_at  timestamptz,  -- device time of the photo / PIN entry
  created_at   timestamptz NOT NULL DEFAULT now(),
  -- A photo proof carries the image and its type; a PIN proof carries neither.
  CONSTRAINT delivery_proofs_kind_matches CHECK (
    (kind = 'photo' AND photo IS NOT NULL AND content_type IS NOT NULL)
    OR (kind = 'pin' AND photo IS NULL))
);
-- Images are already compressed: skip TOAST compression attempts.
ALTER TABLE delivery_proofs ALTER COLUMN photo SET STORAGE EXTERNAL;

-- Append-only reports of something going wrong with an order.
CREATE TABLE IF NOT EXISTS problem_reports (
  id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  order_id      uuid NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
  reporter_id   uuid,  -- no FK: survives account deletion (append-only)
  reporter_role text NOT NULL CONSTRAINT problem_reports_reporter_role_check
                CHECK (reporter_role IN ('customer', 'driver', 'merchant', 'admin', 'system')),
  reason        text NOT NULL CONSTRAINT problem_reports_reason_check CHECK (reason IN (
                  'missing_items', 'wrong_items', 'damaged', 'late', 'not_delivered',
                  'unsafe', 'customer_unreachable', 'merchant_closed', 'other')),
  description   text NOT NULL DEFAULT '' CONSTRAINT problem_reports_description_length CHECK (length(description) <= 2000),
  created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS problem_reports_order_idx ON problem_reports (order_id, created_at);
CREATE INDEX IF NOT EXISTS problem_reports_created_idx ON problem_reports (created_at);
CREATE OR REPLACE TRIGGER problem_reports_append_only
  BEFORE UPDATE ON problem_reports FOR EACH ROW EXECUTE FUNCTION forbid_update();

-- Ratings after delivery, once per order per direction:
-- customer -> driver, customer -> merchant, driver -> customer.
CREATE TABLE IF NOT EXISTS ratings (
  id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  order_id   uuid NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
  rater_id   uuid NOT NULL,
  rater_role text NOT NULL CONSTRAINT ratings_rater_role_check CHECK (rater_role IN ('customer', 'driver')),
  target     text NOT NULL CONSTRAINT ratings_target_check CHECK (target IN ('driver', 'merchant', 'customer')),
  target_id  uuid NOT NULL,  -- users.id / drivers.id / merchants.id according to target
  score      smallint NOT NULL CONSTRAINT ratings_score_range CHECK (score BETWEEN 1 AND 5),
  comment    text CONSTRAINT ratings_comment_length CHECK (length(comment) <= 1000),
  created_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT ratings_direction_check CHECK (
    (rater_role = 'customer' AND target IN ('driver', 'merchant'))
    OR (rater_role = 'driver' AND target = 'customer')),
  -- Insert with ON CONFLICT (order_id, target) DO NOTHING for idempotent retries.
  CONSTRAINT ratings_order_target_key UNIQUE (order_id, target)
);
-- Recomputing a target's average / listing its recent ratings.
CREATE INDEX IF NOT EXISTS ratings_target_idx ON ratings (target, target_id, created_at DESC);

-- Idempotency records for mutating RPCs (CreateOrder, AcceptOffer, ...).
-- Race-free pattern, all in the SAME transaction as the work:
--   INSERT INTO idempotency_keys (caller_id, operation, request_id, request_hash)
--     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING 1;
--   -- row returned: do the work (insert order, outbox row), then
--   UPDATE idempotency_keys SET status = 'completed', response = $5,
--          resource_id = $6, completed_at = now()
--    WHERE caller_id = $1 AND operation = $2 AND request_id = $3;
--   -- no row: a concurrent duplicate inserted first; our INSERT waited on the
--   -- PK until it committed (or rolled back, in which case ours inserts).
--   -- SELECT the row: request_hash differs -> reject (key reused with another
--   -- body); completed -> return the stored response.
CREATE TABLE IF NOT EXISTS idempotency_keys (
  caller_id    uuid NOT NULL,  -- authenticated user; keys are per caller
  operation    text NOT NULL,  -- e.g. 'CreateOrder'
  request_id   text NOT NULL CONSTRAINT idempotency_keys_request_id_length CHECK (length(request_id) BETWEEN 1 AND 200),
  -- Hash (e.g. sha256) of the canonical request, to refuse the same key
  -- reused with a different body.
  request_hash bytea NOT NULL,
  status       text NOT NULL DEFAULT 'in_progress'
               CONSTRAINT idempotency_keys_status_check CHECK (status IN ('in_progress', 'completed')),
  response     bytea,  -- serialized protobuf response, replayed on retries
  resource_id  uuid,   -- e.g. the created order id
  created_at   timestamptz NOT NULL DEFAULT now(),
  completed_at timestamptz,
  expires_at   timestamptz NOT NULL DEFAULT now() + interval '24 hours',
  CONSTRAINT idempotency_keys_completed_has_response CHECK (status <> 'completed' OR response IS NOT NULL),
  PRIMARY KEY (caller_id, operation, request_id)
);
-- Retention: DELETE FROM idempotency_keys WHERE expires_at < now().
CREATE INDEX IF NOT EXISTS idempotency_keys_expires_idx ON idempotency_keys (expires_at);
