-- +goose Up
CREATE TABLE devices (
    tenant_id  TEXT NOT NULL,
    id         TEXT NOT NULL,
    state      TEXT NOT NULL,
    grp        TEXT NOT NULL DEFAULT '',
    tags       TEXT NOT NULL DEFAULT '{}',
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id)
);

-- +goose Down
DROP TABLE devices;
