-- Retention tombstones, SQLite. Keep in step with ../postgres/0002_tombstones.sql.
-- One signed statement per chain: "records 1..=seq were deleted; record seq hashed to head_hash".
CREATE TABLE audit_tombstones (
    chain_id  TEXT    NOT NULL,
    seq       INTEGER NOT NULL,
    head_hash TEXT    NOT NULL,
    time_us   INTEGER NOT NULL,
    key_id    TEXT    NOT NULL,
    signature TEXT    NOT NULL,
    PRIMARY KEY (chain_id, seq, key_id)
);
