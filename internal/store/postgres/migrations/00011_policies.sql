-- +goose Up
CREATE TABLE policies (
    tenant_id  TEXT NOT NULL,
    name       TEXT NOT NULL,
    doc        BYTEA NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, name)
);
-- A device's own assignment wins over its group's.
CREATE TABLE policy_assignments (
    tenant_id TEXT NOT NULL,
    kind      TEXT NOT NULL, -- 'device' or 'group'
    target    TEXT NOT NULL,
    policy    TEXT NOT NULL,
    PRIMARY KEY (tenant_id, kind, target)
);

-- +goose Down
DROP TABLE policy_assignments;
DROP TABLE policies;
