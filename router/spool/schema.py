"""The journal's SQLite schema. No column holds patient data in plaintext: names, IDs,
accession numbers, descriptions and UIDs live only in the sealed ``meta`` column; lookups by
UID go through keyed tags (see keys.Keyring.lookup_tag)."""

SCHEMA_VERSION = 3
# Versions a journal can be upgraded from by running SCHEMA (new tables only, nothing else
# changes): 2 -> 3 added Storage Commitment (commitments, commitment_items).
UPGRADABLE_FROM = frozenset({2})

SCHEMA = """
CREATE TABLE IF NOT EXISTS journal_meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS objects(
    id              TEXT PRIMARY KEY,
    sop_tag         BLOB NOT NULL,
    study_tag       BLOB NOT NULL,
    sop_class_uid   TEXT NOT NULL,
    transfer_syntax TEXT NOT NULL,
    modality        TEXT NOT NULL,
    size            INTEGER NOT NULL,
    sha256          BLOB NOT NULL,          -- keyed: HMAC(content key, SHA-256 of plaintext)
    blob            TEXT NOT NULL,          -- blob file path, or '' when held inline
    chunk_size      INTEGER NOT NULL,
    key_id          TEXT NOT NULL,
    wrapped_key     BLOB,
    meta            BLOB NOT NULL,
    calling_ae      TEXT NOT NULL,
    called_ae       TEXT NOT NULL,
    peer            TEXT NOT NULL,
    received_at     REAL NOT NULL,
    state           TEXT NOT NULL,
    replaces        TEXT
);
CREATE INDEX IF NOT EXISTS objects_sop ON objects(sop_tag, state);
CREATE INDEX IF NOT EXISTS objects_study ON objects(study_tag);
CREATE INDEX IF NOT EXISTS objects_state ON objects(state, received_at);
-- Small objects' encrypted blobs (same format as blob files), held in the journal itself so
-- that one WAL commit is their only fsync.
CREATE TABLE IF NOT EXISTS inline_blobs(
    object_id TEXT PRIMARY KEY REFERENCES objects(id),
    data      BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries(
    object_id       TEXT NOT NULL REFERENCES objects(id),
    destination     TEXT NOT NULL,
    rule            TEXT NOT NULL,
    priority        INTEGER NOT NULL,
    send            TEXT NOT NULL DEFAULT 'object',  -- 'object' now, or 'study' when complete
    state           TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_status     INTEGER,
    last_error      TEXT,
    updated_at      REAL NOT NULL,
    PRIMARY KEY(object_id, destination)
);
CREATE INDEX IF NOT EXISTS deliveries_queue
    ON deliveries(destination, state, priority, next_attempt_at);
CREATE TABLE IF NOT EXISTS destination_state(
    name       TEXT PRIMARY KEY,
    paused     INTEGER NOT NULL DEFAULT 0,
    changed_by TEXT NOT NULL DEFAULT '',
    reason     TEXT NOT NULL DEFAULT '',
    changed_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_object ON deliveries(object_id);
CREATE TABLE IF NOT EXISTS history(
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    object_id TEXT NOT NULL,
    at        REAL NOT NULL,
    event     TEXT NOT NULL,
    detail    TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS history_object ON history(object_id, seq);
-- Storage Commitment requests (N-ACTION) to destinations. The transaction UID is made by this
-- unit and is not patient data; the objects are named by id, never by their UIDs.
CREATE TABLE IF NOT EXISTS commitments(
    transaction_uid TEXT PRIMARY KEY,
    destination     TEXT NOT NULL,
    round           INTEGER NOT NULL DEFAULT 1,  -- 1 first request, 2 asked again
    state           TEXT NOT NULL,  -- requesting | waiting | done | expired
    attempts        INTEGER NOT NULL DEFAULT 0,  -- N-ACTIONs tried
    next_attempt_at REAL NOT NULL DEFAULT 0,
    deadline        REAL,            -- a waiting request expires then
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL,
    outcome         TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS commitments_open ON commitments(destination, state);
CREATE TABLE IF NOT EXISTS commitment_items(
    transaction_uid TEXT NOT NULL REFERENCES commitments(transaction_uid),
    object_id       TEXT NOT NULL REFERENCES objects(id),
    PRIMARY KEY(transaction_uid, object_id)
);
CREATE INDEX IF NOT EXISTS commitment_items_object ON commitment_items(object_id);
CREATE TABLE IF NOT EXISTS alarms(
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    code       TEXT NOT NULL,
    message    TEXT NOT NULL,
    raised_at  REAL NOT NULL,
    cleared_at REAL
);
"""
