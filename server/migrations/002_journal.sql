-- The matcher's journal in one round trip: a batch of outbox rows arrives as one
-- JSON document ({op: [row, ...]}, the rows as the Lua scripts wrote them, times
-- in milliseconds of Redis' clock) and is applied in one statement, so one
-- network round trip and one commit, instead of a BEGIN, a statement per kind of
-- row and a COMMIT.
--
-- Inserts first, then updates: inside a batch a row is always created before it
-- is ended. Each statement sees the ones before it (a request made and cancelled
-- in the same batch). Every write is idempotent and only moves a row forward, so
-- a batch replayed after a crash changes nothing.

CREATE FUNCTION astroq_ms(ms numeric) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT timestamptz 'epoch' + floor(ms) * interval '1 millisecond' $$;

CREATE FUNCTION astroq_apply_journal(batch jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
  e record;
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

  -- Ends row by row, in the order they happened: each is one index lookup (a
  -- join against the batch would be planned for a hundred rows and scan the
  -- table), and where a batch ends a row twice the first end wins, as it did.
  IF batch ? 'offer_end' THEN
    FOR e IN SELECT * FROM jsonb_to_recordset(batch->'offer_end') AS (id uuid, outcome text, at numeric)
    LOOP
      UPDATE offers SET outcome = e.outcome, answered_at = astroq_ms(e.at)
      WHERE id = e.id AND outcome IS NULL;
    END LOOP;
  END IF;

  IF batch ? 'req_end' THEN
    FOR e IN SELECT * FROM jsonb_to_recordset(batch->'req_end')
             AS (id uuid, state text, reason text, at numeric)
    LOOP
      UPDATE requests SET state = e.state, reason = NULLIF(e.reason, ''), ended_at = astroq_ms(e.at)
      WHERE id = e.id AND state = 'open';
    END LOOP;
  END IF;

  IF batch ? 'sess_end' THEN
    FOR e IN SELECT * FROM jsonb_to_recordset(batch->'sess_end') AS (id uuid, at numeric, "by" text)
    LOOP
      UPDATE sessions SET ended_at = astroq_ms(e.at), ended_by = e."by"
      WHERE id = e.id AND ended_at IS NULL;
    END LOOP;
  END IF;

  -- Every status change is recorded, in order; the astrologer keeps the last.
  IF batch ? 'status' THEN
    FOR e IN SELECT * FROM jsonb_to_recordset(batch->'status')
             AS (aid uuid, status text, reason text, at numeric)
    LOOP
      UPDATE astrologers SET status = e.status, updated_at = astroq_ms(e.at) WHERE id = e.aid;
      INSERT INTO status_changes (astrologer_id, status, reason, at)
      VALUES (e.aid, e.status, e.reason, astroq_ms(e.at));
    END LOOP;
  END IF;
END;
$$;
