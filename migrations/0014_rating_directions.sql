-- 0014_rating_directions: every rating direction the contract allows (OrderService.RateOrder),
-- each once per order. Customers rate the courier and the merchant, couriers the customer and
-- the merchant, merchant owners the courier. The old key (order_id, target) let only one party
-- rate a courier or a merchant per order; the key is now the direction.
ALTER TABLE ratings DROP CONSTRAINT IF EXISTS ratings_rater_role_check;
ALTER TABLE ratings ADD CONSTRAINT ratings_rater_role_check
  CHECK (rater_role IN ('customer', 'driver', 'merchant'));
ALTER TABLE ratings DROP CONSTRAINT IF EXISTS ratings_direction_check;
ALTER TABLE ratings ADD CONSTRAINT ratings_direction_check CHECK (
  (rater_role = 'customer' AND target IN ('driver', 'merchant'))
  OR (rater_role = 'driver' AND target IN ('customer', 'merchant'))
  OR (rater_role = 'merchant' AND target = 'driver'));
ALTER TABLE ratings DROP CONSTRAINT IF EXISTS ratings_order_target_key;
ALTER TABLE ratings DROP CONSTRAINT IF EXISTS ratings_order_direction_key;
ALTER TABLE ratings ADD CONSTRAINT ratings_order_direction_key
  UNIQUE (order_id, rater_role, target);
