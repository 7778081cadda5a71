-- +goose Up
-- Device API tokens (internal/deviceauth). Only SHA-256 hashes of tokens
-- and client-assertion keys are stored.
CREATE TABLE device_tokens (
    hash              BYTEA PRIMARY KEY,
    kind              BIGINT NOT NULL, -- 1 access, 2 refresh
    family            TEXT NOT NULL,
    tenant_id         TEXT NOT NULL,
    device            TEXT NOT NULL,
    cert_serial       TEXT NOT NULL,
    issued_at         BIGINT NOT NULL,
    expires_at        BIGINT NOT NULL,
    family_expires_at BIGINT NOT NULL,
    used_at           BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX device_tokens_family ON device_tokens (family);
CREATE INDEX device_tokens_expiry ON device_tokens (expires_at);

-- Revoked families. Lookups consult this table instead of a flag on the
-- token rows, so a token inserted into a family while it was being
-- revoked is refused too. expires_at is the family's absolute deadline
-- after which the row may be pruned (0 if the family had no tokens when
-- revoked: no deadline is known, so the row is kept).
CREATE TABLE device_token_revocations (
    family     TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL
);

CREATE TABLE device_assertion_ids (
    k          BYTEA PRIMARY KEY,
    expires_at BIGINT NOT NULL
);
CREATE INDEX device_assertion_ids_expiry ON device_assertion_ids (expires_at);

-- +goose Down
DROP TABLE device_assertion_ids;
DROP TABLE device_token_revocations;
DROP TABLE device_tokens;
