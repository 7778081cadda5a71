-- +goose Up
-- Attestation state of package attest (see attest.Store); used by package
-- attestsql.

-- A device has at most maxPending outstanding challenges: each occupies
-- one of its slots (0 .. maxPending-1), and the unique (device, slot) key
-- is what enforces the bound across server nodes. An expired challenge's
-- slot is taken over by a single conditional upsert.
CREATE TABLE attest_challenges (
    tenant_id  TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    id         TEXT NOT NULL,
    slot       BIGINT NOT NULL,
    nonce      BYTEA NOT NULL,
    pcrs       TEXT NOT NULL,
    expires    BIGINT NOT NULL,
    bound_spki BYTEA NOT NULL,
    PRIMARY KEY (tenant_id, device_id, id),
    UNIQUE (tenant_id, device_id, slot)
);

CREATE TABLE attest_activations (
    tenant_id   TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    id          TEXT NOT NULL,
    secret_hash BYTEA NOT NULL,
    ak_public   BYTEA NOT NULL,
    ek_key_hash BYTEA NOT NULL,
    ek_issuer   TEXT NOT NULL,
    expires     BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, device_id, id)
);

CREATE TABLE attest_aks (
    tenant_id   TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    ak_public   BYTEA NOT NULL,
    ek_key_hash BYTEA NOT NULL,
    ek_issuer   TEXT NOT NULL,
    enrolled    BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, device_id)
);

-- The signed document is the source of truth; stages and PCR values are
-- parsed from it on read.
CREATE TABLE attest_refvalues (
    tenant_id TEXT NOT NULL,
    hw_model  TEXT NOT NULL,
    rel       TEXT NOT NULL,
    doc       BYTEA NOT NULL,
    signature BYTEA NOT NULL,
    imported  BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, hw_model, rel)
);

CREATE TABLE attest_results (
    tenant_id    TEXT NOT NULL,
    device_id    TEXT NOT NULL,
    challenge_id TEXT NOT NULL,
    verdict      BYTEA NOT NULL,
    bound_spki   BYTEA NOT NULL,
    summary      BYTEA NOT NULL,
    PRIMARY KEY (tenant_id, device_id)
);

-- ord is reset count (4 bytes) || restart count (4) || clock (8), big
-- endian: byte order is TPM time order (attest.CountersAfter) on both
-- engines and covers the full unsigned ranges, so keep-the-highest is one
-- comparison in one statement. prev_* hold the row's value before the
-- last AdvanceCounters (NULL after the first), which that statement
-- returns.
CREATE TABLE attest_counters (
    tenant_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    ord       BYTEA NOT NULL,
    safe      BIGINT NOT NULL,
    prev_ord  BYTEA,
    prev_safe BIGINT,
    PRIMARY KEY (tenant_id, device_id)
);

-- grp '' is the tenant's default policy.
CREATE TABLE attest_policies (
    tenant_id TEXT NOT NULL,
    grp       TEXT NOT NULL,
    policy    BYTEA NOT NULL,
    PRIMARY KEY (tenant_id, grp)
);

-- A tenant's reference-value signing key, as PKIX SubjectPublicKeyInfo.
CREATE TABLE attest_refkeys (
    tenant_id TEXT PRIMARY KEY,
    spki      BYTEA NOT NULL
);

-- +goose Down
DROP TABLE attest_refkeys;
DROP TABLE attest_policies;
DROP TABLE attest_counters;
DROP TABLE attest_results;
DROP TABLE attest_refvalues;
DROP TABLE attest_aks;
DROP TABLE attest_activations;
DROP TABLE attest_challenges;
