-- +goose Up
CREATE TABLE cas (
    id         TEXT PRIMARY KEY,
    tenant_id  TEXT NOT NULL,
    kind       TEXT NOT NULL,
    parent_id  TEXT NOT NULL DEFAULT '',
    cert_der   BLOB NOT NULL,
    key_ref    BLOB,
    status     TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    crl_number INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX cas_by_tenant ON cas (tenant_id, created_at);

CREATE TABLE certs (
    serial      TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    device_id   TEXT NOT NULL DEFAULT '',
    ca_id       TEXT NOT NULL,
    profile     TEXT NOT NULL,
    spki_sha256 BLOB NOT NULL,
    not_before  INTEGER NOT NULL,
    not_after   INTEGER NOT NULL,
    status      TEXT NOT NULL,
    revoked_at  INTEGER NOT NULL DEFAULT 0,
    reason      INTEGER NOT NULL DEFAULT 0,
    cert_der    BLOB NOT NULL
);
CREATE INDEX certs_by_device ON certs (tenant_id, device_id, not_before);
CREATE INDEX certs_revoked ON certs (ca_id, status, serial);
CREATE INDEX certs_by_spki ON certs (spki_sha256);

-- +goose Down
DROP TABLE certs;
DROP TABLE cas;
