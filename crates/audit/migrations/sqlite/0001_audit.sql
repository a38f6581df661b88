-- Audit trail, SQLite. Keep in step with ../postgres/0001_audit.sql (same tables and columns).
CREATE TABLE audit_records (
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
);
CREATE INDEX audit_records_time ON audit_records (time_us);

CREATE TABLE audit_checkpoints (
    chain_id  TEXT    NOT NULL,
    seq       INTEGER NOT NULL,
    head_hash TEXT    NOT NULL,
    time_us   INTEGER NOT NULL,
    key_id    TEXT    NOT NULL,
    signature TEXT    NOT NULL,
    PRIMARY KEY (chain_id, seq, key_id)
);
