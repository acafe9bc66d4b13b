-- 0002_merchants: merchants, opening hours and menus.

-- A place that sells: restaurant, grocery, pharmacy.
CREATE TABLE IF NOT EXISTS merchants (
  id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  -- RESTRICT: a merchant must be reassigned or deleted before its owner.
  owner_user_id     uuid NOT NULL REFERENCES users (id) ON DELETE RESTRICT,
  name              text NOT NULL CONSTRAINT merchants_name_length CHECK (length(name) BETWEEN 1 AND 200),
  description       text NOT NULL DEFAULT '',
  address           text NOT NULL,
  lat               double precision NOT NULL CONSTRAINT merchants_lat_range CHECK (lat BETWEEN -90 AND 90),
  lng               double precision NOT NULL CONSTRAINT merchants_lng_range CHECK (lng BETWEEN -180 AND 180),
  -- H3 resolution-7 cell of (lat, lng) as the 15-hex-digit string the h3
  -- library returns; a cheap proximity prefilter ("merchants in these cells").
  -- Nullable so rows can be written before the cell is computed.
  h3_cell           text CONSTRAINT merchants_h3_cell_format CHECK (h3_cell ~ '^[0-9a-f]{15}$'),
  -- IANA zone name; merchant_hours are wall-clock times in this zone.
  timezone          text NOT NULL DEFAULT 'UTC',
  is_open           boolean NOT NULL DEFAULT false,
  delivery_radius_m integer NOT NULL DEFAULT 5000 CONSTRAINT merchants_delivery_radius_positive CHECK (delivery_radius_m > 0),
  avg_prep_seconds  integer NOT NULL DEFAULT 900 CONSTRAINT merchants_avg_prep_positive CHECK (avg_prep_seconds > 0),
  -- All menu prices of this merchant are minor units of this currency.
  currency_code     char(3) NOT NULL DEFAULT 'USD' CONSTRAINT merchants_currency_format CHECK (currency_code ~ '^[A-Z]{3}$'),
  -- How a courier proves handoff; copied onto each order at creation.
  handoff_policy    text NOT NULL DEFAULT 'pin'
                    CONSTRAINT merchants_handoff_policy_check CHECK (handoff_policy IN ('pin', 'photo', 'pin_or_photo')),
  rating_avg        numeric(3,2) CONSTRAINT merchants_rating_avg_range CHECK (rating_avg BETWEEN 1 AND 5),
  rating_count      integer NOT NULL DEFAULT 0 CONSTRAINT merchants_rating_count_nonneg CHECK (rating_count >= 0),
  created_at        timestamptz NOT NULL DEFAULT now(),
  updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS merchants_owner_idx ON merchants (owner_user_id);
CREATE INDEX IF NOT EXISTS merchants_h3_cell_idx ON merchants (h3_cell);
CREATE OR REPLACE TRIGGER merchants_set_updated_at
  BEFORE UPDATE ON merchants FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- Weekly opening hours, local time in merchants.timezone. Several rows per
-- weekday allowed (lunch and dinner). closes < opens means the interval runs
-- past midnight into the next day; use closes = '24:00' for "until midnight".
CREATE TABLE IF NOT EXISTS merchant_hours (
  merchant_id uuid NOT NULL REFERENCES merchants (id) ON DELETE CASCADE,
  weekday     smallint NOT NULL CONSTRAINT merchant_hours_weekday_range CHECK (weekday BETWEEN 0 AND 6), -- 0 = Sunday (as EXTRACT(dow))
  opens       time NOT NULL,
  closes      time NOT NULL,
  CONSTRAINT merchant_hours_nonempty CHECK (opens <> closes),
  PRIMARY KEY (merchant_id, weekday, opens)
);

-- Something a merchant sells.
CREATE TABLE IF NOT EXISTS menu_items (
  id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  merchant_id uuid NOT NULL REFERENCES merchants (id) ON DELETE CASCADE,
  name        text NOT NULL CONSTRAINT menu_items_name_length CHECK (length(name) BETWEEN 1 AND 200),
  description text NOT NULL DEFAULT '',
  price_minor bigint NOT NULL CONSTRAINT menu_items_price_nonneg CHECK (price_minor >= 0),
  available   boolean NOT NULL DEFAULT true,
  position    integer NOT NULL DEFAULT 0,
  created_at  timestamptz NOT NULL DEFAULT now(),
  updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS menu_items_merchant_position_idx ON menu_items (merchant_id, position);
CREATE OR REPLACE TRIGGER menu_items_set_updated_at
  BEFORE UPDATE ON menu_items FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- A choice attached to a menu item ("Size", "Extra toppings").
CREATE TABLE IF NOT EXISTS menu_option_groups (
  id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  menu_item_id uuid NOT NULL REFERENCES menu_items (id) ON DELETE CASCADE,
  name         text NOT NULL,
  -- min_select = 1, max_select = 1 is a required single choice.
  min_select   integer NOT NULL DEFAULT 0 CONSTRAINT menu_option_groups_min_nonneg CHECK (min_select >= 0),
  max_select   integer NOT NULL DEFAULT 1,
  position     integer NOT NULL DEFAULT 0,
  CONSTRAINT menu_option_groups_max_ge_min CHECK (max_select >= min_select AND max_select >= 1)
);
CREATE INDEX IF NOT EXISTS menu_option_groups_item_position_idx ON menu_option_groups (menu_item_id, position);

-- One option in a group ("Large", "Extra cheese").
CREATE TABLE IF NOT EXISTS menu_options (
  id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  option_group_id   uuid NOT NULL REFERENCES menu_option_groups (id) ON DELETE CASCADE,
  name              text NOT NULL,
  -- May be negative ("no cheese, -0.50"); the order line total is CHECKed >= 0.
  price_delta_minor bigint NOT NULL DEFAULT 0,
  available         boolean NOT NULL DEFAULT true,
  position          integer NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS menu_options_group_position_idx ON menu_options (option_group_id, position);
