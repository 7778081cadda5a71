-- +goose Up
CREATE TABLE schemas (
    tenant_id  TEXT NOT NULL,
    id         TEXT NOT NULL,
    version    INTEGER NOT NULL,
    doc        BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id, version)
);

-- A recent window of verified telemetry per device. Confidential fields
-- are sealed with the tenant's data key (sealed); payload holds the rest.
CREATE TABLE telemetry (
    tenant_id   TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    stream      TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    at          INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    schema_id   TEXT NOT NULL,
    schema_ver  INTEGER NOT NULL,
    payload     BLOB NOT NULL,
    sealed      BLOB,
    PRIMARY KEY (tenant_id, device_id, seq)
);
CREATE INDEX telemetry_by_received ON telemetry (received_at);

-- +goose Down
DROP TABLE telemetry;
DROP TABLE schemas;
