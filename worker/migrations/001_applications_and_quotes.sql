-- The application as accepted at the edge, and one quote per insurer (DESIGN.md "PostgreSQL").
CREATE TABLE applications (
    id          uuid        PRIMARY KEY,
    partner     text        NOT NULL,
    user_id     text,
    payload     jsonb       NOT NULL,
    status      text        NOT NULL DEFAULT 'accepted'
                CHECK (status IN ('accepted', 'in_progress', 'completed')),
    trace       text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE quotes (
    application_id  uuid        NOT NULL REFERENCES applications (id),
    insurer_code    text        NOT NULL,
    status          text        NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'running', 'ok', 'error')),
    attempt         integer     NOT NULL DEFAULT 0,
    premium_rub     numeric(12, 2),
    error           text,
    heartbeat_at    timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (application_id, insurer_code)
);

-- the sweeper's question: running tasks whose heartbeat is old
CREATE INDEX quotes_running_heartbeat ON quotes (heartbeat_at) WHERE status = 'running';
