-- +goose Up
-- Per-device telemetry MAC secrets (COSE_Mac0), sealed with the tenant's
-- data key. Epoch keys are derived from the secret; prev_secret is the
-- secret of epoch-1 when the secret itself was rotated.
CREATE TABLE device_secrets (
    tenant_id   TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    secret      BLOB NOT NULL,
    prev_secret BLOB,
    epoch       INTEGER NOT NULL,
    since       INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, device_id)
);

-- +goose Down
DROP TABLE device_secrets;
