-- 0006_location_history: GPS history, partitioned by UTC day.
-- The live position is in Redis; this is the durable trail (disputes,
-- analytics, ETA training). Written in batches with COPY.

-- No primary key and no FK to drivers: both would slow COPY ingest, and
-- history must outlive a deleted driver until retention drops it. Ingest
-- filters dirty fixes before writing; a CHECK failure would abort a whole
-- COPY batch, so only the coordinate ranges are CHECKed here.
CREATE TABLE IF NOT EXISTS driver_location_history (
  driver_id   uuid NOT NULL,
  recorded_at timestamptz NOT NULL,                -- device time of the fix (partition key)
  received_at timestamptz NOT NULL DEFAULT now(),  -- server receive time
  lat         double precision NOT NULL CONSTRAINT driver_location_history_lat_range CHECK (lat BETWEEN -90 AND 90),
  lng         double precision NOT NULL CONSTRAINT driver_location_history_lng_range CHECK (lng BETWEEN -180 AND 180),
  accuracy_m  real,
  heading_deg real,
  speed_mps   real,
  -- true for fixes buffered offline and uploaded late: they fill history but
  -- must not move the driver or fire events.
  backfilled  boolean NOT NULL DEFAULT false
) PARTITION BY RANGE (recorded_at);

-- Partitioned index: created on every partition automatically.
CREATE INDEX IF NOT EXISTS driver_location_history_driver_recorded_idx
  ON driver_location_history (driver_id, recorded_at);

-- Catches rows outside every daily partition (clock-skewed devices, a missed
-- partition job) so inserts never fail.
CREATE TABLE IF NOT EXISTS driver_location_history_default
  PARTITION OF driver_location_history DEFAULT;

-- Creates driver_location_history_YYYYMMDD for [day, day+1) in UTC if it
-- does not exist. Returns true if it created it. Idempotent and safe under
-- concurrent calls (advisory lock + catching duplicate errors). Rows already
-- sitting in the default partition for that day are moved into the new
-- partition (otherwise attaching would fail). Uses CREATE + ATTACH rather
-- than CREATE ... PARTITION OF so the parent only takes SHARE UPDATE
-- EXCLUSIVE and concurrent ingest into the other partitions is not blocked.
-- Run daily for a few days ahead, e.g. for today .. today+2.
CREATE OR REPLACE FUNCTION ensure_location_history_partition(day date)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
  part text        := 'driver_location_history_' || to_char(day, 'YYYYMMDD');
  lo   timestamptz := day::timestamp AT TIME ZONE 'UTC';
  hi   timestamptz := (day + 1)::timestamp AT TIME ZONE 'UTC';
BEGIN
  IF to_regclass(part) IS NOT NULL THEN
    RETURN false;
  END IF;
  -- Serialize creators (held until the caller's transaction ends).
  PERFORM pg_advisory_xact_lock(hashtext('ensure_location_history_partition'));
  IF to_regclass(part) IS NOT NULL THEN
    RETURN false;
  END IF;
  BEGIN
    -- Parent first, then default: the same order ATTACH uses, so no deadlock
    -- with inserters (which take ROW EXCLUSIVE on both).
    LOCK TABLE ONLY driver_location_history IN SHARE UPDATE EXCLUSIVE MODE;
    LOCK TABLE driver_location_history_default IN ACCESS EXCLUSIVE MODE;
    EXECUTE format(
      'CREATE TABLE %I (LIKE driver_location_history INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
      part);
    EXECUTE format(
      'WITH moved AS (DELETE FROM driver_location_history_default
                       WHERE recorded_at >= $1 AND recorded_at < $2 RETURNING *)
       INSERT INTO %I SELECT * FROM moved', part)
      USING lo, hi;
    EXECUTE format(
      'ALTER TABLE driver_location_history ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
      part, lo, hi);
  EXCEPTION
    -- A concurrent creator outside the advisory lock (e.g. manual DDL). A
    -- racing CREATE TABLE can surface as unique_violation on pg_type.
    WHEN duplicate_table OR unique_violation THEN
      RETURN false;
  END;
  RETURN true;
END
$$;

-- Drops every daily partition whose whole day is before `day` (UTC) and
-- deletes older rows from the default partition. Returns the number of
-- partitions dropped. Dropping a partition briefly takes an ACCESS EXCLUSIVE
-- lock on the parent; run it off-peak.
CREATE OR REPLACE FUNCTION drop_location_history_partitions_before(day date)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
  r       record;
  dropped integer := 0;
BEGIN
  FOR r IN
    SELECT c.oid::regclass AS rel
      FROM pg_inherits i
      JOIN pg_class c ON c.oid = i.inhrelid
     WHERE i.inhparent = 'driver_location_history'::regclass
       AND c.relname ~ '^driver_location_history_[0-9]{8}$'
       AND to_date(right(c.relname, 8), 'YYYYMMDD') < day
     ORDER BY c.relname
  LOOP
    EXECUTE format('DROP TABLE %s', r.rel);
    dropped := dropped + 1;
  END LOOP;
  DELETE FROM driver_location_history_default
   WHERE recorded_at < day::timestamp AT TIME ZONE 'UTC';
  RETURN dropped;
END
$$;

-- Partitions for yesterday .. the day after tomorrow (UTC).
SELECT ensure_location_history_partition(d::date)
  FROM generate_series((now() AT TIME ZONE 'UTC')::date - 1,
                       (now() AT TIME ZONE 'UTC')::date + 2,
                       interval '1 day') AS d;
