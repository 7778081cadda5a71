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
    slot       INTEGER NOT NULL,
    nonce      BLOB NOT NULL,
    pcrs       TEXT NOT NULL,
    expires    INTEGER NOT NULL,
    bound_spki BLOB NOT NULL,
    PRIMARY KEY (tenant_id, device_id, id),
    UNIQUE (tenant_id, device_id, slot)
);

CREATE TABLE attest_activations (
    tenant_id   TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    id          TEXT NOT NULL,
    secret_hash BLOB NOT NULL,
    ak_public   BLOB NOT NULL,
    ek_key_hash BLOB NOT NULL,
    ek_issuer   TEXT NOT NULL,
    expires     INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, device_id, id)
);

CREATE TABLE attest_aks (
    tenant_id   TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    ak_public   BLOB NOT NULL,
    ek_key_hash BLOB NOT NULL,
    ek_issuer   TEXT NOT NULL,
    enrolled    INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, device_id)
);

-- The signed document is the source of truth; stages and PCR values are
-- parsed from it on read.
CREATE TABLE attest_refvalues (
    tenant_id TEXT NOT NULL,
    hw_model  TEXT NOT NULL,
    rel       TEXT NOT NULL,
    doc       BLOB NOT NULL,
    signature BLOB NOT NULL,
    imported  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, hw_model, rel)
);

CREATE TABLE attest_results (
    tenant_id    TEXT NOT NULL,
    device_id    TEXT NOT NULL,
    challenge_id TEXT NOT NULL,
    verdict      BLOB NOT NULL,
    bound_spki   BLOB NOT NULL,
    summary      BLOB NOT NULL,
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
    ord       BLOB NOT NULL,
    safe      INTEGER NOT NULL,
    prev_ord  BLOB,
    prev_safe INTEGER,
    PRIMARY KEY (tenant_id, device_id)
);

-- grp '' is the tenant's default policy.
CREATE TABLE attest_policies (
    tenant_id TEXT NOT NULL,
    grp       TEXT NOT NULL,
    policy    BLOB NOT NULL,
    PRIMARY KEY (tenant_id, grp)
);

-- A tenant's reference-value signing key, as PKIX SubjectPublicKeyInfo.
CREATE TABLE attest_refkeys (
    tenant_id TEXT PRIMARY KEY,
    spki      BLOB NOT NULL
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
