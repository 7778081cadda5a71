-- +goose Up
-- OTA state of package ota (see tufrepo.Store, rollout.Store, ota.Floors);
-- used by package otasql. Target files (images of tens of MiB) are not
-- here: they stay in ota.DirBlobs in the data directory.

-- TUF metadata and sealed online keys by name, per tenant.
CREATE TABLE ota_metadata (
    tenant_id TEXT NOT NULL,
    name      TEXT NOT NULL,
    data      BYTEA NOT NULL,
    PRIMARY KEY (tenant_id, name)
);

-- Rollout engine snapshots, as JSON.
CREATE TABLE ota_rollouts (
    tenant_id TEXT NOT NULL,
    id        TEXT NOT NULL,
    snapshot  BYTEA NOT NULL,
    PRIMARY KEY (tenant_id, id)
);

-- Anti-rollback floors as 8-byte big-endian security versions: byte order
-- is numeric order on both engines over the whole uint64 range, so
-- "never lower" is one conditional upsert.
CREATE TABLE ota_floors (
    tenant_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    floor_sv  BYTEA NOT NULL,
    PRIMARY KEY (tenant_id, device_id)
);

-- +goose Down
DROP TABLE ota_floors;
DROP TABLE ota_rollouts;
DROP TABLE ota_metadata;
