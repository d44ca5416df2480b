"""The journal's SQLite schema. No column holds patient data in plaintext: names, IDs,
accession numbers, descriptions and UIDs live only in the sealed ``meta`` column; lookups by
UID go through keyed tags (see keys.Keyring.lookup_tag)."""

SCHEMA_VERSION = 4
# 2 -> 3 added Storage Commitment (commitments, commitment_items: created by SCHEMA) and the
# read model (READ_MODEL, filled by MIGRATE_2_TO_3).
# 3 -> 4 added the WAN hub's tables: on a unit, hub_uploads (resumable upload state per object
# and hub destination); on a hub, hub_units, hub_incoming, hub_commits and hub_manifests.
# All are created empty by SCHEMA (IF NOT EXISTS); MIGRATE_3_TO_4 only records the version.

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
-- A unit's uploads to hub destinations. ``url`` is the hub's path for the upload (a random
-- id, no patient data); ``confirmed`` the bytes the hub has confirmed durable.
CREATE TABLE IF NOT EXISTS hub_uploads(
    object_id   TEXT NOT NULL REFERENCES objects(id),
    destination TEXT NOT NULL,
    url         TEXT NOT NULL,
    size        INTEGER NOT NULL,
    confirmed   INTEGER NOT NULL DEFAULT 0,
    state       TEXT NOT NULL,   -- uploading | committed | delivered (to the provider's PACS)
    updated_at  REAL NOT NULL,
    PRIMARY KEY(object_id, destination)
);
CREATE INDEX IF NOT EXISTS hub_uploads_state ON hub_uploads(destination, state);
-- On a hub: enrolled units. Only a SHA-256 of each token is kept.
CREATE TABLE IF NOT EXISTS hub_units(
    unit        TEXT PRIMARY KEY,
    token_hash  BLOB NOT NULL UNIQUE,
    enrolled_at REAL NOT NULL,
    revoked_at  REAL
);
-- On a hub: uploads being received. UIDs and the content hash live only in sealed ``meta``;
-- ``sop_tag``/``digest`` are keyed tags (as in objects). Bytes are in segment files under
-- <spool>/uploads/<id>/, encrypted with the upload's own data key (wrapped here).
CREATE TABLE IF NOT EXISTS hub_incoming(
    id          TEXT PRIMARY KEY,
    unit        TEXT NOT NULL,
    size        INTEGER NOT NULL,
    received    INTEGER NOT NULL DEFAULT 0,   -- durable bytes (segments fsynced)
    sop_tag     BLOB NOT NULL,
    study_tag   BLOB NOT NULL,
    digest      BLOB NOT NULL,
    key_id      TEXT NOT NULL,
    wrapped_key BLOB NOT NULL,
    meta        BLOB NOT NULL,
    state       TEXT NOT NULL,   -- uploading | committed
    object_id   TEXT,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS hub_incoming_unit ON hub_incoming(unit, state);
-- On a hub: every committed (SOP Instance UID, SHA-256), so a repeat is "already committed".
CREATE TABLE IF NOT EXISTS hub_commits(
    sop_tag      BLOB NOT NULL,
    digest       BLOB NOT NULL,
    unit         TEXT NOT NULL,
    study_tag    BLOB NOT NULL,
    object_id    TEXT NOT NULL,
    upload_id    TEXT NOT NULL,
    committed_at REAL NOT NULL,
    PRIMARY KEY(sop_tag, digest)
);
CREATE INDEX IF NOT EXISTS hub_commits_study ON hub_commits(unit, study_tag);
-- On a hub: what a unit announced a study holds.
CREATE TABLE IF NOT EXISTS hub_manifests(
    unit       TEXT NOT NULL,
    study_tag  BLOB NOT NULL,
    expected   INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY(unit, study_tag)
);
CREATE TABLE IF NOT EXISTS alarms(
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    code       TEXT NOT NULL,
    message    TEXT NOT NULL,
    raised_at  REAL NOT NULL,
    cleared_at REAL
);
"""

# Why no INSERT OR IGNORE in the triggers below: a statement's own conflict clause (an UPSERT
# such as the operator's resend) overrides those inside the triggers it fires.
# Version 3: the control API's read model and the operators' audit log. The read model is
# kept by triggers inside the same transactions that change objects and deliveries (ingest,
# claims, outcomes, recovery, retention, operator actions), so it can never disagree with
# them and no code path has to remember it. Listing studies and the unit status read these
# small tables instead of scanning every object (docs/control-api.md, bench/control.py).
READ_MODEL = """
CREATE TABLE IF NOT EXISTS studies(
    study_tag         BLOB PRIMARY KEY,
    study_id          TEXT NOT NULL UNIQUE,   -- opaque: hex of the keyed tag, never the UID
    meta_object       TEXT NOT NULL,          -- the object whose sealed meta is copied here
    meta              BLOB NOT NULL,          -- sealed (bound to meta_object); x'' once gone
    modalities        TEXT NOT NULL DEFAULT '',
    held              INTEGER NOT NULL DEFAULT 0,   -- objects in state 'held'
    first_received_at REAL NOT NULL,
    last_received_at  REAL NOT NULL,
    last_delivered_at REAL,
    pending           INTEGER NOT NULL DEFAULT 0,   -- deliveries by state
    inflight          INTEGER NOT NULL DEFAULT 0,
    delivered         INTEGER NOT NULL DEFAULT 0,
    failed            INTEGER NOT NULL DEFAULT 0,
    discarded         INTEGER NOT NULL DEFAULT 0,
    committing        INTEGER NOT NULL DEFAULT 0,   -- stored, awaiting Storage Commitment
    state TEXT GENERATED ALWAYS AS (CASE
        WHEN failed > 0 THEN 'failed'
        WHEN inflight > 0 OR committing > 0 THEN 'sending'
        WHEN pending > 0 THEN 'waiting'
        WHEN discarded > 0 THEN 'discarded'
        WHEN delivered > 0 THEN 'delivered'
        ELSE 'unrouted' END) VIRTUAL
);
CREATE INDEX IF NOT EXISTS studies_last ON studies(last_received_at);
CREATE INDEX IF NOT EXISTS studies_state ON studies(state, last_received_at);
CREATE INDEX IF NOT EXISTS studies_delivered ON studies(last_delivered_at);
-- A study's deliveries counted by destination, state and priority (rank 0 = stat).
CREATE TABLE IF NOT EXISTS study_deliveries(
    study_tag   BLOB NOT NULL,
    destination TEXT NOT NULL,
    state       TEXT NOT NULL,
    priority    INTEGER NOT NULL,
    n           INTEGER NOT NULL,
    PRIMARY KEY(study_tag, destination, state, priority)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS study_deliveries_destination
    ON study_deliveries(destination, state, priority);
CREATE TABLE IF NOT EXISTS destination_stats(
    name              TEXT PRIMARY KEY,
    last_delivered_at REAL,
    last_error        TEXT,
    last_error_at     REAL
);
CREATE TABLE IF NOT EXISTS spool_totals(
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    held_objects INTEGER NOT NULL DEFAULT 0,
    held_bytes   INTEGER NOT NULL DEFAULT 0
);
INSERT OR IGNORE INTO spool_totals(id) VALUES (1);
CREATE INDEX IF NOT EXISTS objects_received ON objects(received_at, size);

CREATE TRIGGER IF NOT EXISTS objects_read_model_insert AFTER INSERT ON objects BEGIN
    INSERT INTO studies(study_tag, study_id, meta_object, meta,
        first_received_at, last_received_at)
    SELECT NEW.study_tag, lower(hex(NEW.study_tag)), NEW.id, NEW.meta,
        NEW.received_at, NEW.received_at
    WHERE NOT EXISTS (SELECT 1 FROM studies WHERE study_tag = NEW.study_tag);
    UPDATE studies SET meta_object = NEW.id, meta = NEW.meta,
        held = held + (NEW.state = 'held'),
        last_received_at = max(last_received_at, NEW.received_at),
        modalities = CASE
            WHEN NEW.modality = '' OR instr(',' || modalities || ',', ',' || NEW.modality || ',')
                THEN modalities
            WHEN modalities = '' THEN NEW.modality
            ELSE modalities || ',' || NEW.modality END
    WHERE study_tag = NEW.study_tag;
    UPDATE spool_totals SET held_objects = held_objects + 1, held_bytes = held_bytes + NEW.size
    WHERE id = 1 AND NEW.state = 'held';
END;

CREATE TRIGGER IF NOT EXISTS objects_read_model_state AFTER UPDATE OF state ON objects
WHEN OLD.state != NEW.state AND (OLD.state = 'held' OR NEW.state = 'held') BEGIN
    UPDATE studies SET held = held + (NEW.state = 'held') - (OLD.state = 'held')
    WHERE study_tag = NEW.study_tag;
    UPDATE spool_totals SET
        held_objects = held_objects + (NEW.state = 'held') - (OLD.state = 'held'),
        held_bytes = held_bytes + NEW.size * ((NEW.state = 'held') - (OLD.state = 'held'))
    WHERE id = 1;
END;

-- Crypto-shredding reaches the study's copy of the sealed summary too: once no object of the
-- study keeps its metadata, neither does the study.
CREATE TRIGGER IF NOT EXISTS objects_read_model_shred AFTER UPDATE OF meta ON objects
WHEN NEW.meta = x'' BEGIN
    UPDATE studies SET meta = x'' WHERE study_tag = NEW.study_tag AND NOT EXISTS (
        SELECT 1 FROM objects o WHERE o.study_tag = NEW.study_tag AND o.meta != x'');
END;

CREATE TRIGGER IF NOT EXISTS deliveries_read_model_insert AFTER INSERT ON deliveries BEGIN
    INSERT INTO study_deliveries(study_tag, destination, state, priority, n)
    SELECT o.study_tag, NEW.destination, NEW.state, NEW.priority, 0
    FROM objects o WHERE o.id = NEW.object_id AND NOT EXISTS (
        SELECT 1 FROM study_deliveries s WHERE s.study_tag = o.study_tag
        AND s.destination = NEW.destination AND s.state = NEW.state
        AND s.priority = NEW.priority);
    UPDATE study_deliveries SET n = n + 1
    WHERE study_tag = (SELECT study_tag FROM objects WHERE id = NEW.object_id)
      AND destination = NEW.destination AND state = NEW.state AND priority = NEW.priority;
    UPDATE studies SET
        pending = pending + (NEW.state = 'pending'),
        inflight = inflight + (NEW.state = 'inflight'),
        delivered = delivered + (NEW.state = 'delivered'),
        failed = failed + (NEW.state = 'failed'),
        discarded = discarded + (NEW.state = 'discarded'),
        committing = committing + (NEW.state = 'committing')
    WHERE study_tag = (SELECT study_tag FROM objects WHERE id = NEW.object_id);
END;

CREATE TRIGGER IF NOT EXISTS deliveries_read_model_update
AFTER UPDATE OF state, priority ON deliveries
WHEN OLD.state != NEW.state OR OLD.priority != NEW.priority BEGIN
    UPDATE study_deliveries SET n = n - 1
    WHERE study_tag = (SELECT study_tag FROM objects WHERE id = OLD.object_id)
      AND destination = OLD.destination AND state = OLD.state AND priority = OLD.priority;
    -- Empty rows go, so the undelivered ranges of the index stay as small as the backlog.
    DELETE FROM study_deliveries
    WHERE study_tag = (SELECT study_tag FROM objects WHERE id = OLD.object_id)
      AND destination = OLD.destination AND state = OLD.state AND priority = OLD.priority
      AND n <= 0;
    INSERT INTO study_deliveries(study_tag, destination, state, priority, n)
    SELECT o.study_tag, NEW.destination, NEW.state, NEW.priority, 0
    FROM objects o WHERE o.id = NEW.object_id AND NOT EXISTS (
        SELECT 1 FROM study_deliveries s WHERE s.study_tag = o.study_tag
        AND s.destination = NEW.destination AND s.state = NEW.state
        AND s.priority = NEW.priority);
    UPDATE study_deliveries SET n = n + 1
    WHERE study_tag = (SELECT study_tag FROM objects WHERE id = NEW.object_id)
      AND destination = NEW.destination AND state = NEW.state AND priority = NEW.priority;
    UPDATE studies SET
        pending = pending + (NEW.state = 'pending') - (OLD.state = 'pending'),
        inflight = inflight + (NEW.state = 'inflight') - (OLD.state = 'inflight'),
        delivered = delivered + (NEW.state = 'delivered') - (OLD.state = 'delivered'),
        failed = failed + (NEW.state = 'failed') - (OLD.state = 'failed'),
        discarded = discarded + (NEW.state = 'discarded') - (OLD.state = 'discarded'),
        committing = committing + (NEW.state = 'committing') - (OLD.state = 'committing'),
        last_delivered_at = CASE WHEN NEW.state = 'delivered' AND OLD.state != 'delivered'
            THEN NEW.updated_at ELSE last_delivered_at END
    WHERE study_tag = (SELECT study_tag FROM objects WHERE id = NEW.object_id);
END;

CREATE TRIGGER IF NOT EXISTS deliveries_read_model_outcome
AFTER UPDATE OF state, last_error ON deliveries
WHEN (NEW.state = 'delivered' AND OLD.state != 'delivered')
  OR (NEW.last_error IS NOT NULL AND NEW.state != 'delivered') BEGIN
    INSERT INTO destination_stats(name) SELECT NEW.destination
    WHERE NOT EXISTS (SELECT 1 FROM destination_stats WHERE name = NEW.destination);
    UPDATE destination_stats SET
        last_delivered_at = CASE WHEN NEW.state = 'delivered'
            THEN NEW.updated_at ELSE last_delivered_at END,
        last_error = CASE WHEN NEW.state = 'delivered' THEN last_error ELSE NEW.last_error END,
        last_error_at = CASE WHEN NEW.state = 'delivered'
            THEN last_error_at ELSE NEW.updated_at END
    WHERE name = NEW.destination;
END;

CREATE TRIGGER IF NOT EXISTS deliveries_read_model_delete AFTER DELETE ON deliveries BEGIN
    UPDATE study_deliveries SET n = n - 1
    WHERE study_tag = (SELECT study_tag FROM objects WHERE id = OLD.object_id)
      AND destination = OLD.destination AND state = OLD.state AND priority = OLD.priority;
    -- Empty rows go, so the undelivered ranges of the index stay as small as the backlog.
    DELETE FROM study_deliveries
    WHERE study_tag = (SELECT study_tag FROM objects WHERE id = OLD.object_id)
      AND destination = OLD.destination AND state = OLD.state AND priority = OLD.priority
      AND n <= 0;
    UPDATE studies SET
        pending = pending - (OLD.state = 'pending'),
        inflight = inflight - (OLD.state = 'inflight'),
        delivered = delivered - (OLD.state = 'delivered'),
        failed = failed - (OLD.state = 'failed'),
        discarded = discarded - (OLD.state = 'discarded'),
        committing = committing - (OLD.state = 'committing')
    WHERE study_tag = (SELECT study_tag FROM objects WHERE id = OLD.object_id);
END;

-- Operator actions, append-only: the journal itself refuses to change or remove an entry.
CREATE TABLE IF NOT EXISTS audit(
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    at      REAL NOT NULL,
    user    TEXT NOT NULL,
    uid     INTEGER NOT NULL,
    action  TEXT NOT NULL,
    target  TEXT NOT NULL,
    reason  TEXT NOT NULL DEFAULT '',
    outcome TEXT NOT NULL DEFAULT ''
);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
"""

# Fills the read model from the objects and deliveries a version-2 journal already holds.
MIGRATE_2_TO_3 = """
-- The read model is rebuilt from the objects and deliveries, whatever it held before.
DELETE FROM studies;
DELETE FROM study_deliveries;
DELETE FROM destination_stats;
INSERT INTO studies(study_tag, study_id, meta_object, meta, modalities, held,
    first_received_at, last_received_at)
SELECT o.study_tag, lower(hex(o.study_tag)),
    (SELECT id FROM objects l WHERE l.study_tag = o.study_tag ORDER BY l.received_at DESC,
        l.rowid DESC LIMIT 1),
    (SELECT meta FROM objects l WHERE l.study_tag = o.study_tag ORDER BY l.received_at DESC,
        l.rowid DESC LIMIT 1),
    coalesce((SELECT group_concat(m, ',') FROM (SELECT DISTINCT modality AS m FROM objects x
        WHERE x.study_tag = o.study_tag AND x.modality != '')), ''),
    sum(o.state = 'held'), min(o.received_at), max(o.received_at)
FROM objects o GROUP BY o.study_tag;
INSERT INTO study_deliveries(study_tag, destination, state, priority, n)
SELECT o.study_tag, d.destination, d.state, d.priority, count(*)
FROM deliveries d JOIN objects o ON o.id = d.object_id
GROUP BY o.study_tag, d.destination, d.state, d.priority;
UPDATE studies SET
    pending = coalesce((SELECT sum(n) FROM study_deliveries s
        WHERE s.study_tag = studies.study_tag AND s.state = 'pending'), 0),
    inflight = coalesce((SELECT sum(n) FROM study_deliveries s
        WHERE s.study_tag = studies.study_tag AND s.state = 'inflight'), 0),
    delivered = coalesce((SELECT sum(n) FROM study_deliveries s
        WHERE s.study_tag = studies.study_tag AND s.state = 'delivered'), 0),
    failed = coalesce((SELECT sum(n) FROM study_deliveries s
        WHERE s.study_tag = studies.study_tag AND s.state = 'failed'), 0),
    discarded = coalesce((SELECT sum(n) FROM study_deliveries s
        WHERE s.study_tag = studies.study_tag AND s.state = 'discarded'), 0),
    committing = coalesce((SELECT sum(n) FROM study_deliveries s
        WHERE s.study_tag = studies.study_tag AND s.state = 'committing'), 0),
    last_delivered_at = (SELECT max(d.updated_at) FROM deliveries d JOIN objects o
        ON o.id = d.object_id WHERE o.study_tag = studies.study_tag AND d.state = 'delivered');
UPDATE studies SET meta = x'' WHERE meta IS NULL OR held = 0 AND NOT EXISTS (
    SELECT 1 FROM objects o WHERE o.study_tag = studies.study_tag AND o.meta != x'');
INSERT INTO destination_stats(name, last_delivered_at)
SELECT destination, max(updated_at) FROM deliveries WHERE state = 'delivered'
GROUP BY destination;
UPDATE spool_totals SET
    held_objects = (SELECT count(*) FROM objects WHERE state = 'held'),
    held_bytes = (SELECT coalesce(sum(size), 0) FROM objects WHERE state = 'held')
WHERE id = 1;
"""

# Version 4's tables are created (empty) by SCHEMA; nothing to fill.
MIGRATE_3_TO_4 = ""
