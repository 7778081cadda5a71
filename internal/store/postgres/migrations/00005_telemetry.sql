-- +goose Up
CREATE TABLE schemas (
    tenant_id  TEXT NOT NULL,
    id         TEXT NOT NULL,
    version    BIGINT NOT NULL,
    doc        BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, id, version)
);

-- A recent window of verified telemetry per device. Confidential fields
-- are sealed with the tenant's data key (sealed); payload holds the rest.
CREATE TABLE telemetry (
    tenant_id   TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    stream      TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    at          BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    schema_id   TEXT NOT NULL,
    schema_ver  BIGINT NOT NULL,
    payload     BYTEA NOT NULL,
    sealed      BYTEA,
    PRIMARY KEY (tenant_id, device_id, seq)
);
CREATE INDEX telemetry_by_received ON telemetry (received_at);

-- +goose Down
DROP TABLE telemetry;
DROP TABLE schemas;
