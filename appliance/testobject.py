"""The commissioning test object: a tiny synthetic image (patient "WAYSTATION^TEST", no real
data) sent to the unit's own receiver; it passes once every destination has confirmed one
delivery since it was sent (read through the control API, as the console does)."""

from __future__ import annotations

import time
from io import BytesIO

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from router.config.model import Config
from router.control.client import ControlClient


def synthetic_object() -> Dataset:
    """A 8x8 Secondary Capture image with made-up identifiers only."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID = "WAYSTATION^TEST", "WAYSTATION-TEST"
    ds.Modality, ds.ConversionType = "OT", "WSD"
    ds.StudyDescription = "Waystation commissioning test"
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = bytes(range(64))
    return ds


def send_test_object(config: Config, timeout: float = 120.0) -> tuple[bool, str]:
    """Send the test object to this unit and wait for every destination to confirm one."""
    from pynetdicom import AE

    from router.ingest import pynetdicom_setup

    pynetdicom_setup.configure()
    host = config.ingest.host
    host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    ds = synthetic_object()
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    sent_at = time.time()
    ae = AE(ae_title="WSCOMMISSION")
    ae.add_requested_context(SecondaryCaptureImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate(host, config.ingest.port, ae_title=config.unit.ae_title)
    if not assoc.is_established:
        return False, "the unit's own receiver refused the test association (is it running?)"
    try:
        answer = assoc.send_c_store(ds)
    finally:
        assoc.release()
    status = getattr(answer, "Status", None)
    if status != 0:
        return False, f"the unit did not store the test object (status {status})"
    client = ControlClient(config.control_socket, timeout=10)
    deadline = time.monotonic() + timeout
    waiting = [d.name for d in config.destinations]
    while waiting and time.monotonic() < deadline:
        views = {v.name: v for v in client.destinations()}
        waiting = [name for name in waiting if (views[name].last_success_at or 0) < sent_at]
        if waiting:
            time.sleep(1)
    if waiting:
        return False, f"stored, but not confirmed by {', '.join(waiting)} within {timeout:.0f} s"
    return True, f"stored and delivered to every destination in {time.time() - sent_at:.1f} s"
