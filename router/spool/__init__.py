"""The spool: encrypted blobs, the journal, the unit's keys, recovery, verify and export."""
