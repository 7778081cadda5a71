-- +goose Up
-- Provisioning (internal/provision): enrollment groups, the provisioning
-- registry of devices, one-time group tokens and used challenge nonces.
-- provision_devices is not the gateway's devices table: it records how a
-- device ID was onboarded (bootstrap credential fingerprint, TPM AK, claim
-- state and owner), keyed by (tenant_id, id) like devices. A provisioned
-- device has a row in both, with the same key; a claimable device waits
-- here, in the maker's pool tenant, before it has any row in devices.
CREATE TABLE provision_groups (
    tenant_id TEXT NOT NULL,
    name      TEXT NOT NULL,
    id        TEXT NOT NULL,
    doc       TEXT NOT NULL, -- the provision.Group as JSON
    PRIMARY KEY (tenant_id, name)
);

CREATE TABLE provision_devices (
    tenant_id      TEXT NOT NULL,
    id             TEXT NOT NULL,
    grp            TEXT NOT NULL DEFAULT '',
    state          TEXT NOT NULL,
    provisioned_at INTEGER NOT NULL DEFAULT 0,
    fingerprint    TEXT NOT NULL DEFAULT '',
    ak_public      BLOB NOT NULL,
    owner          TEXT NOT NULL DEFAULT '',
    claim_id       TEXT NOT NULL DEFAULT '',
    claim_salt     BLOB NOT NULL,
    claim_hash     BLOB NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
-- A claim ID is unique among records that have one.
CREATE UNIQUE INDEX provision_devices_claim ON provision_devices (claim_id) WHERE claim_id <> '';

CREATE TABLE provision_group_tokens (
    id         TEXT PRIMARY KEY,
    tenant_id  TEXT NOT NULL,
    grp        TEXT NOT NULL,
    device     TEXT NOT NULL,
    hash       BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX provision_group_tokens_group ON provision_group_tokens (tenant_id, grp);

CREATE TABLE provision_nonces (
    k          TEXT PRIMARY KEY,
    expires_at INTEGER NOT NULL
);
CREATE INDEX provision_nonces_expiry ON provision_nonces (expires_at);

-- +goose Down
DROP TABLE provision_nonces;
DROP TABLE provision_group_tokens;
DROP TABLE provision_devices;
DROP TABLE provision_groups;
