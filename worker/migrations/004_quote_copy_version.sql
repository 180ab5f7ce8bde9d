-- Results keeps a copy of the quotes of each application in progress, trusted while the
-- application row is the version its own commit left (worker/quote_cache.h). Only results makes a
-- quote final or gives it a premium or an error text, and it updates the application in the same
-- transaction. Anything else that changes what the copy holds (a hand edit, a data migration, the
-- previous release during a rolling deploy) must move the application's version too, or results
-- could decide the application's status from a copy that does not know the change: completed
-- too early, or never. These triggers do it for every session but the worker's roles, which keep
-- the rule themselves and say so with osago.writer = worker in their connection's options
-- (worker/pg.c). A worker session pays the WHEN test only.
--
-- CREATE TRIGGER holds writes to quotes for the milliseconds it takes.
CREATE FUNCTION quotes_touch_application() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE applications
       SET updated_at = greatest(now(), updated_at + interval '1 millisecond')
     WHERE id = CASE WHEN TG_OP = 'DELETE' THEN OLD.application_id ELSE NEW.application_id END
        OR id = CASE WHEN TG_OP = 'UPDATE' THEN OLD.application_id END;
    RETURN NULL;
END
$$;

-- What the copy holds of a quote: its insurer, whether it is final and how, premium, error text.
CREATE TRIGGER quotes_final_changed
    AFTER UPDATE OF application_id, insurer_code, status, premium_rub, error ON quotes
    FOR EACH ROW
    WHEN (current_setting('osago.writer', true) IS DISTINCT FROM 'worker'
          AND ((CASE WHEN OLD.status IN ('ok', 'error') THEN OLD.status END)
                   IS DISTINCT FROM (CASE WHEN NEW.status IN ('ok', 'error') THEN NEW.status END)
               OR OLD.premium_rub IS DISTINCT FROM NEW.premium_rub
               OR OLD.error IS DISTINCT FROM NEW.error
               OR OLD.application_id <> NEW.application_id
               OR OLD.insurer_code <> NEW.insurer_code))
    EXECUTE FUNCTION quotes_touch_application();

-- Which quotes an application has.
CREATE TRIGGER quotes_added_or_removed
    AFTER INSERT OR DELETE ON quotes
    FOR EACH ROW
    WHEN (current_setting('osago.writer', true) IS DISTINCT FROM 'worker')
    EXECUTE FUNCTION quotes_touch_application();
