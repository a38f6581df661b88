-- Audit trail, SQLite only: `audit_records` becomes a WITHOUT ROWID table, stored as the B-tree
-- of its primary key (chain_id, seq). A rowid table kept that key in a second B-tree, so every
-- append wrote one more page to the WAL. The table is rewritten with every row and column as
-- it was (the chain's hashes cover the values, not the storage), then renamed into place.
-- PostgreSQL has no rowid and needs no counterpart.
CREATE TABLE audit_records_v3 (
    chain_id         TEXT    NOT NULL,
    seq              INTEGER NOT NULL,
    prev_hash        TEXT    NOT NULL,
    hash             TEXT    NOT NULL,
    time_us          INTEGER NOT NULL,
    kind             TEXT    NOT NULL,
    trace_id         TEXT,
    agent            TEXT,
    user_id          TEXT,
    token_id         TEXT,
    session          TEXT,
    client_era       TEXT,
    upstream_era     TEXT,
    server           TEXT,
    method           TEXT,
    tool             TEXT,
    args_fingerprint TEXT,
    decision         TEXT,
    rule_id          TEXT,
    approval_ref     TEXT,
    findings         TEXT    NOT NULL,
    outcome          TEXT,
    error_code       INTEGER,
    latency_us       INTEGER,
    bytes_in         INTEGER,
    bytes_out        INTEGER,
    PRIMARY KEY (chain_id, seq)
) WITHOUT ROWID;

INSERT INTO audit_records_v3 (chain_id, seq, prev_hash, hash, time_us, kind, trace_id, agent,
    user_id, token_id, session, client_era, upstream_era, server, method, tool,
    args_fingerprint, decision, rule_id, approval_ref, findings, outcome, error_code,
    latency_us, bytes_in, bytes_out)
SELECT chain_id, seq, prev_hash, hash, time_us, kind, trace_id, agent,
    user_id, token_id, session, client_era, upstream_era, server, method, tool,
    args_fingerprint, decision, rule_id, approval_ref, findings, outcome, error_code,
    latency_us, bytes_in, bytes_out
FROM audit_records ORDER BY chain_id, seq;

DROP TABLE audit_records;
ALTER TABLE audit_records_v3 RENAME TO audit_records;
CREATE INDEX audit_records_time ON audit_records (time_us);
