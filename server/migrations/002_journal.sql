-- The matcher's journal in one round trip: a batch of outbox rows arrives as one
-- JSON document ({op: [row, ...]}, the rows as the Lua scripts wrote them, times
-- in milliseconds of Redis' clock) and is applied in one statement, so one
-- network round trip and one commit, instead of a BEGIN, a statement per kind of
-- row and a COMMIT.
--
-- Inserts first, then updates: inside a batch a row is always created before it
-- is ended. Each statement sees the ones before it (a request made and cancelled
-- in the same batch). Every write is idempotent and only moves a row forward, so
-- a batch replayed after a crash changes nothing; where one batch ends the same
-- row twice, the first end wins, as it did when the rows were applied one by one.

CREATE FUNCTION astroq_ms(ms numeric) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT timestamptz 'epoch' + floor(ms) * interval '1 millisecond' $$;

CREATE FUNCTION astroq_apply_journal(batch jsonb) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
  -- Only the kinds of row present are touched: most batches hold one or two.
  IF batch ? 'req' THEN
    INSERT INTO requests (id, user_id, kind, astrologer_id, seq, created_at)
    SELECT r.id, r."user", r.kind, NULLIF(r.aid, '')::uuid, r.seq, astroq_ms(r.at)
    FROM jsonb_to_recordset(batch->'req')
         AS r(id uuid, "user" uuid, kind text, aid text, seq bigint, at numeric)
    ON CONFLICT DO NOTHING;
  END IF;

  IF batch ? 'offer' THEN
    INSERT INTO offers (id, request_id, astrologer_id, direct, created_at, expires_at)
    SELECT o.id, o.rid, o.aid, o.direct, astroq_ms(o.at), astroq_ms(o.exp)
    FROM jsonb_to_recordset(batch->'offer')
         AS o(id uuid, rid uuid, aid uuid, direct boolean, at numeric, exp numeric)
    ON CONFLICT DO NOTHING;
  END IF;

  IF batch ? 'sess' THEN
    INSERT INTO sessions (id, request_id, user_id, astrologer_id, kind, started_at)
    SELECT s.id, s.rid, s."user", s.aid, s.kind, astroq_ms(s.at)
    FROM jsonb_to_recordset(batch->'sess')
         AS s(id uuid, rid uuid, "user" uuid, aid uuid, kind text, at numeric)
    ON CONFLICT DO NOTHING;
  END IF;

  IF batch ? 'offer_end' THEN
    UPDATE offers SET outcome = e.outcome, answered_at = astroq_ms(e.at)
    FROM (SELECT DISTINCT ON (x.id) x.id, x.outcome, x.at
          FROM ROWS FROM (jsonb_to_recordset(batch->'offer_end')
                 AS (id uuid, outcome text, at numeric)) WITH ORDINALITY AS x
          ORDER BY x.id, x.ordinality) AS e
    WHERE offers.id = e.id AND offers.outcome IS NULL;
  END IF;

  IF batch ? 'req_end' THEN
    UPDATE requests SET state = e.state, reason = NULLIF(e.reason, ''), ended_at = astroq_ms(e.at)
    FROM (SELECT DISTINCT ON (x.id) x.id, x.state, x.reason, x.at
          FROM ROWS FROM (jsonb_to_recordset(batch->'req_end')
                 AS (id uuid, state text, reason text, at numeric)) WITH ORDINALITY AS x
          ORDER BY x.id, x.ordinality) AS e
    WHERE requests.id = e.id AND requests.state = 'open';
  END IF;

  IF batch ? 'sess_end' THEN
    UPDATE sessions SET ended_at = astroq_ms(e.at), ended_by = e."by"
    FROM (SELECT DISTINCT ON (x.id) x.id, x.at, x."by"
          FROM ROWS FROM (jsonb_to_recordset(batch->'sess_end')
                 AS (id uuid, at numeric, "by" text)) WITH ORDINALITY AS x
          ORDER BY x.id, x.ordinality) AS e
    WHERE sessions.id = e.id AND sessions.ended_at IS NULL;
  END IF;

  -- Every status change is recorded, in order; the astrologer keeps the last.
  IF batch ? 'status' THEN
    INSERT INTO status_changes (astrologer_id, status, reason, at)
    SELECT c.aid, c.status, c.reason, astroq_ms(c.at)
    FROM ROWS FROM (jsonb_to_recordset(batch->'status')
           AS (aid uuid, status text, reason text, at numeric)) WITH ORDINALITY AS c
    ORDER BY c.ordinality;
    UPDATE astrologers SET status = c.status, updated_at = astroq_ms(c.at)
    FROM (SELECT DISTINCT ON (x.aid) x.aid, x.status, x.at
          FROM ROWS FROM (jsonb_to_recordset(batch->'status')
                 AS (aid uuid, status text, at numeric)) WITH ORDINALITY AS x
          ORDER BY x.aid, x.ordinality DESC) AS c
    WHERE astrologers.id = c.aid;
  END IF;
END;
$$;
