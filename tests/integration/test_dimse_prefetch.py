"""The C-STORE sender makes the batch's next object ready (read from the journal, first chunk
decrypted) while the destination stores the current one. What is sent must not depend on
it: every object arrives exactly as held, whatever the hint said."""

from __future__ import annotations

import hashlib
from pathlib import Path

from pydicom import dcmread

from router.config.model import DimseDestination
from router.delivery.dimse import DimseSender
from tests.support import dicomgen
from tests.support.hub import hold, unit_spool
from tests.support.peers import Storescp


def test_the_next_object_is_made_ready_and_a_wrong_hint_changes_nothing(tmp_path: Path) -> None:
    spool = unit_spool(tmp_path)
    files = dicomgen.make_tiny_objects(tmp_path / "in", count=4)
    held = [hold(spool, path.read_bytes(), destination="pacs") for path in files]
    with Storescp(tmp_path / "pacs") as pacs:
        destination = DimseDestination(
            name="pacs", type="dimse", ae_title="STORESCP", host="127.0.0.1", port=pacs.port
        )
        sender = DimseSender(destination, unit_ae="WAYSTATION", spool=spool)
        meta = dcmread(files[0], stop_before_pixels=True).file_meta
        sop_class, syntax = str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)

        def send(index: int, upcoming: str | None) -> None:
            outcome = sender.send(held[index], sop_class, syntax, upcoming=upcoming)
            assert outcome.kind == "status" and outcome.status == 0, outcome

        send(0, held[1].id)
        assert sender._ready is not None and sender._ready[0] == held[1].id
        send(1, held[2].id)  # takes the ready one
        # The hint named object 3, but object 3 is sent next after a different one: the
        # ready reader is dropped, never sent in another object's place.
        send(3, "no-such-object")
        assert sender._ready is None
        send(2, held[3].id)
        sender.close()
        assert sender._ready is None
        received = pacs.wait_for_files(4)
    sent = sorted(hashlib.sha256(dicomgen.dataset_bytes(p)).hexdigest() for p in received)
    expected = sorted(hashlib.sha256(dicomgen.dataset_bytes(p)).hexdigest() for p in files)
    assert sent == expected
