-- +goose Up
CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    wrapped_key BLOB NOT NULL
);

CREATE TABLE tokens (
    id         TEXT PRIMARY KEY,
    hash       BLOB NOT NULL,
    kind       TEXT NOT NULL,
    tenant_id  TEXT NOT NULL DEFAULT '',
    role       TEXT NOT NULL DEFAULT '',
    device_id  TEXT NOT NULL DEFAULT '',
    name       TEXT NOT NULL DEFAULT '',
    created_by TEXT NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL DEFAULT 0,
    revoked_at INTEGER NOT NULL DEFAULT 0,
    used_at    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX tokens_by_tenant ON tokens (kind, tenant_id);

CREATE TABLE audit (
    seq       INTEGER PRIMARY KEY,
    at        INTEGER NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    target    TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    result    TEXT NOT NULL,
    detail    TEXT NOT NULL,
    prev_hash BLOB NOT NULL,
    hash      BLOB NOT NULL
);
CREATE INDEX audit_by_tenant ON audit (tenant_id, seq);

-- The head is kept apart from the log so that truncating the log's tail is
-- detectable: verify compares the last entry with the head.
CREATE TABLE audit_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL,
    hash BLOB NOT NULL
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, x'');

-- +goose Down
DROP TABLE audit_head;
DROP TABLE audit;
DROP TABLE tokens;
DROP TABLE tenants;
