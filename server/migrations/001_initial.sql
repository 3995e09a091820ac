-- The system of record: accounts, every request, offer and session with its
-- times and outcome, astrologer status changes and every admin change.

CREATE TABLE users (
    id            uuid PRIMARY KEY,
    email         text NOT NULL UNIQUE,
    name          text NOT NULL,
    role          text NOT NULL CHECK (role IN ('user', 'astrologer', 'admin')),
    password_hash text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE astrologers (
    id           uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    is_top       boolean NOT NULL DEFAULT false,
    weight       double precision NOT NULL DEFAULT 1 CHECK (weight > 0),
    capacity     integer NOT NULL DEFAULT 1 CHECK (capacity >= 1),
    flow_enabled boolean NOT NULL DEFAULT true,
    languages    text[] NOT NULL DEFAULT '{}',
    status       text NOT NULL DEFAULT 'offline' CHECK (status IN ('offline', 'online', 'break')),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE requests (
    id            uuid PRIMARY KEY,
    user_id       uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind          text NOT NULL CHECK (kind IN ('chat', 'call')),
    astrologer_id uuid REFERENCES users (id) ON DELETE CASCADE,
    seq           bigint NOT NULL,
    state         text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'assigned', 'cancelled')),
    reason        text,
    created_at    timestamptz NOT NULL,
    ended_at      timestamptz
);
CREATE INDEX requests_open ON requests (seq) WHERE state = 'open';
CREATE INDEX requests_user ON requests (user_id, created_at);

CREATE TABLE offers (
    id            uuid PRIMARY KEY,
    request_id    uuid NOT NULL REFERENCES requests (id) ON DELETE CASCADE,
    astrologer_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    direct        boolean NOT NULL,
    created_at    timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL,
    outcome       text CHECK (outcome IN ('accepted', 'declined', 'expired', 'withdrawn', 'returned')),
    answered_at   timestamptz
);
CREATE INDEX offers_request ON offers (request_id);
CREATE INDEX offers_open ON offers (astrologer_id) WHERE outcome IS NULL;

-- A request is assigned at most once: the unique request_id says so in the record too.
CREATE TABLE sessions (
    id            uuid PRIMARY KEY,
    request_id    uuid NOT NULL UNIQUE REFERENCES requests (id) ON DELETE CASCADE,
    user_id       uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    astrologer_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind          text NOT NULL,
    started_at    timestamptz NOT NULL,
    ended_at      timestamptz,
    ended_by      text CHECK (ended_by IN ('user', 'astrologer', 'system'))
);
CREATE INDEX sessions_started ON sessions (started_at);
CREATE INDEX sessions_open ON sessions (astrologer_id) WHERE ended_at IS NULL;

CREATE TABLE status_changes (
    id            bigserial PRIMARY KEY,
    astrologer_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    status        text NOT NULL,
    reason        text NOT NULL,
    at            timestamptz NOT NULL
);

CREATE TABLE flow_settings (
    id         integer PRIMARY KEY CHECK (id = 1),
    top_flow   text NOT NULL DEFAULT 'on' CHECK (top_flow IN ('off', 'on', 'boost')),
    boost      double precision NOT NULL DEFAULT 2 CHECK (boost > 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO flow_settings (id) VALUES (1);

CREATE TABLE admin_changes (
    id        bigserial PRIMARY KEY,
    admin_id  uuid REFERENCES users (id) ON DELETE SET NULL,
    action    text NOT NULL,
    target_id uuid,
    before    jsonb,
    after     jsonb,
    at        timestamptz NOT NULL DEFAULT now()
);

-- Refresh tokens rotate: each may be used once; a reused one is refused.
CREATE TABLE refresh_tokens (
    jti        uuid PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    expires_at timestamptz NOT NULL,
    used_at    timestamptz
);
