-- 0012_notification_signal: every new notification is announced on the channel
-- 'delivery_notifications' as '<recipient_id> <id>', for the live feed (tracking_svc's
-- StreamNotifications). A trigger rather than a call in each writer: order_svc's transitions and
-- arrival notices and matching_svc's stacking and give-up notices all insert here, and so will
-- writers yet to come. NOTIFY is transactional: it is delivered when the inserting transaction
-- commits and never if it rolls back, so nothing uncommitted is announced. Listeners that were
-- away re-read the table (ids are the feed's sequence numbers); the signal only says "look".
CREATE OR REPLACE FUNCTION announce_notification() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('delivery_notifications', NEW.recipient_id::text || ' ' || NEW.id::text);
  RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS notifications_announce ON notifications;
CREATE TRIGGER notifications_announce
  AFTER INSERT ON notifications
  FOR EACH ROW EXECUTE FUNCTION announce_notification();
