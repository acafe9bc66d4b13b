-- 0011_prep_learning: merchants learn their preparation time from their orders.
-- Marking an order ready moves avg_prep_seconds toward that order's confirm-to-ready time
-- (the rule is order_svc.domain.orders.learn_prep, applied in the transition's statement).

-- How many preparations avg_prep_seconds was learned from; 0 means it is still the estimate
-- the merchant gave when it was created.
ALTER TABLE merchants ADD COLUMN IF NOT EXISTS prep_observations integer NOT NULL DEFAULT 0
  CONSTRAINT merchants_prep_observations_nonneg CHECK (prep_observations >= 0);
-- The weighted mean, in seconds, of how far avg_prep_seconds missed each order: the width of
-- the merchant's ETA band.
ALTER TABLE merchants ADD COLUMN IF NOT EXISTS prep_deviation_seconds integer NOT NULL DEFAULT 0
  CONSTRAINT merchants_prep_deviation_nonneg CHECK (prep_deviation_seconds >= 0);

-- A learned average changes with every order a shop makes ready. Orders copy it as their
-- estimate, but a placement that read it moments before is still right to go ahead, so like a
-- rating it no longer counts as a change of the shop (0009 counted it while it was only ever
-- set at creation).
CREATE OR REPLACE FUNCTION bump_merchant_menu_version() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF (NEW.is_open, NEW.lat, NEW.lng, NEW.delivery_radius_m, NEW.currency_code,
      NEW.handoff_policy, NEW.name, NEW.owner_user_id)
     IS DISTINCT FROM
     (OLD.is_open, OLD.lat, OLD.lng, OLD.delivery_radius_m, OLD.currency_code,
      OLD.handoff_policy, OLD.name, OLD.owner_user_id) THEN
    NEW.menu_version := OLD.menu_version + 1;
  END IF;
  RETURN NEW;
END
$$;
