-- +goose Up
CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    wrapped_key BYTEA NOT NULL
);

CREATE TABLE tokens (
    id         TEXT PRIMARY KEY,
    hash       BYTEA NOT NULL,
    kind       TEXT NOT NULL,
    tenant_id  TEXT NOT NULL DEFAULT '',
    role       TEXT NOT NULL DEFAULT '',
    device_id  TEXT NOT NULL DEFAULT '',
    name       TEXT NOT NULL DEFAULT '',
    created_by TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL DEFAULT 0,
    revoked_at BIGINT NOT NULL DEFAULT 0,
    used_at    BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX tokens_by_tenant ON tokens (kind, tenant_id);

CREATE TABLE audit (
    seq       BIGINT PRIMARY KEY,
    at        BIGINT NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    target    TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    result    TEXT NOT NULL,
    detail    TEXT NOT NULL,
    prev_hash BYTEA NOT NULL,
    hash      BYTEA NOT NULL
);
CREATE INDEX audit_by_tenant ON audit (tenant_id, seq);

-- The head is kept apart from the log so that truncating the log's tail is
-- detectable: verify compares the last entry with the head.
CREATE TABLE audit_head (
    id   SMALLINT PRIMARY KEY CHECK (id = 1),
    seq  BIGINT NOT NULL,
    hash BYTEA NOT NULL
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, ''::bytea);

-- +goose Down
DROP TABLE audit_head;
DROP TABLE audit;
DROP TABLE tokens;
DROP TABLE tenants;
