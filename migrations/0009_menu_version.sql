-- 0009_menu_version: a version of what prices an order, apart from ratings and bookkeeping.
-- Order placement checks that the shop is still at the version it priced from; a rating
-- (which rewrites rating_avg) must not count as a change of the shop.
ALTER TABLE merchants ADD COLUMN IF NOT EXISTS menu_version bigint NOT NULL DEFAULT 1;

CREATE OR REPLACE FUNCTION bump_merchant_menu_version() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF (NEW.is_open, NEW.lat, NEW.lng, NEW.delivery_radius_m, NEW.avg_prep_seconds,
      NEW.currency_code, NEW.handoff_policy, NEW.name, NEW.owner_user_id)
     IS DISTINCT FROM
     (OLD.is_open, OLD.lat, OLD.lng, OLD.delivery_radius_m, OLD.avg_prep_seconds,
      OLD.currency_code, OLD.handoff_policy, OLD.name, OLD.owner_user_id) THEN
    NEW.menu_version := OLD.menu_version + 1;
  END IF;
  RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER merchants_bump_menu_version
  BEFORE UPDATE ON merchants FOR EACH ROW EXECUTE FUNCTION bump_merchant_menu_version();
