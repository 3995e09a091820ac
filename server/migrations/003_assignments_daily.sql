-- Each astrologer's assignments per UTC day, kept as sessions are written.
--
-- The admin's stats (every second while the matcher runs, and on every admin
-- socket and GET /admin/stats) show today's assignments per astrologer. Counted
-- from sessions, that read grows with the day: at a thousand sessions a second
-- it took 14-19 ms after a minute, inside the matcher's loop. Read from here it
-- costs one row per astrologer.
--
-- Statement triggers with transition tables see only the rows a statement really
-- inserted or deleted: a journal batch replayed after a crash (ON CONFLICT DO
-- NOTHING) adds nothing, and one batch's sessions cost one upsert per astrologer.

CREATE TABLE assignments_daily (
    day           date NOT NULL,
    astrologer_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    assigned      integer NOT NULL CHECK (assigned >= 0),
    PRIMARY KEY (day, astrologer_id)
);

INSERT INTO assignments_daily (day, astrologer_id, assigned)
SELECT (started_at AT TIME ZONE 'UTC')::date, astrologer_id, count(*)
FROM sessions GROUP BY 1, 2;

CREATE FUNCTION astroq_count_assignments() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO assignments_daily (day, astrologer_id, assigned)
  SELECT (started_at AT TIME ZONE 'UTC')::date, astrologer_id, count(*)
  FROM sessions_inserted GROUP BY 1, 2
  ON CONFLICT (day, astrologer_id)
  DO UPDATE SET assigned = assignments_daily.assigned + EXCLUDED.assigned;
  RETURN NULL;
END;
$$;

CREATE FUNCTION astroq_uncount_assignments() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  UPDATE assignments_daily d SET assigned = d.assigned - gone.n
  FROM (SELECT (started_at AT TIME ZONE 'UTC')::date AS day, astrologer_id, count(*) AS n
        FROM sessions_deleted GROUP BY 1, 2) gone
  WHERE d.day = gone.day AND d.astrologer_id = gone.astrologer_id;
  RETURN NULL;
END;
$$;

CREATE TRIGGER sessions_counted AFTER INSERT ON sessions
REFERENCING NEW TABLE AS sessions_inserted
FOR EACH STATEMENT EXECUTE FUNCTION astroq_count_assignments();

CREATE TRIGGER sessions_uncounted AFTER DELETE ON sessions
REFERENCING OLD TABLE AS sessions_deleted
FOR EACH STATEMENT EXECUTE FUNCTION astroq_uncount_assignments();
