-- +goose Up
-- Security events, aggregated: repeats of the same (tenant, type, device,
-- reason) within a window raise count and last_at instead of adding rows,
-- so a flood (handshake failures, rate-limit hits) stays one row.
CREATE TABLE events (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id TEXT NOT NULL,
    type      TEXT NOT NULL,
    severity  TEXT NOT NULL,
    device_id TEXT NOT NULL DEFAULT '',
    remote    TEXT NOT NULL DEFAULT '',
    reason    TEXT NOT NULL DEFAULT '',
    detail    TEXT NOT NULL DEFAULT '',
    first_at  INTEGER NOT NULL,
    last_at   INTEGER NOT NULL,
    count     INTEGER NOT NULL
);
CREATE INDEX events_by_tenant ON events (tenant_id, last_at);
CREATE INDEX events_by_key ON events (tenant_id, type, device_id, reason, last_at);

-- +goose Down
DROP TABLE events;
