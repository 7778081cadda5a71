-- +goose Up
-- A twin is stored as one JSON document; revision is the compare-and-swap
-- counter of package twin.
CREATE TABLE twins (
    tenant_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    name      TEXT NOT NULL,
    revision  INTEGER NOT NULL,
    doc       BLOB NOT NULL,
    PRIMARY KEY (tenant_id, device_id, name)
);

-- +goose Down
DROP TABLE twins;
