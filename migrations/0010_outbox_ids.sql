-- 0010_outbox_ids: outbox ids double as event ids that consumers deduplicate on (for a day),
-- so a database created anew (a test run, a fresh environment next to a Redis that kept its
-- dedupe records) must not reuse ids an older database already published. Each database's
-- ids start at its creation time in microseconds.
SELECT setval(
  pg_get_serial_sequence('outbox', 'id'),
  greatest(
    (SELECT coalesce(max(id), 0) FROM outbox),
    (extract(epoch FROM clock_timestamp()) * 1000000)::bigint
  )
);
