-- 0008_order_details: what order placement and problem reports need beyond 0003.

-- Problem report reasons follow the API's ProblemReason enum.
ALTER TABLE problem_reports DROP CONSTRAINT IF EXISTS problem_reports_reason_check;
ALTER TABLE problem_reports ADD CONSTRAINT problem_reports_reason_check CHECK (reason IN (
  'order_late', 'missing_items', 'wrong_items', 'damaged', 'not_delivered', 'order_not_ready',
  'customer_unreachable', 'address_not_found', 'courier_cannot_continue', 'conduct', 'safety',
  'other'));

-- Lines keep the order the customer listed them in.
ALTER TABLE order_items ADD COLUMN IF NOT EXISTS line_no integer NOT NULL DEFAULT 1;
