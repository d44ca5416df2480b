"""A small, synchronous DICOM upper layer (PS3.8) and DIMSE codec, for either role.

Why it exists: pynetdicom's threaded association (a DUL thread polling every millisecond, a
reactor thread, queue hand-offs) cost the delivery sender about 5 ms of CPU per object; see
docs/architecture.md. Here every call runs in the caller's thread and blocks on the socket.

- :mod:`router.dicom.pdu` - PDU framing: read one PDU with a hard length limit, send buffers
  with ``sendmsg``; deadlines on every blocking call.
- :mod:`router.dicom.pdata` - P-DATA-TF: fragment a command set and a (streamed) data set
  into PDVs sized for the peer; reassemble received PDVs into messages.
- :mod:`router.dicom.commands` - DIMSE command sets (C-STORE, C-ECHO, N-ACTION,
  N-EVENT-REPORT): encode and decode.
- :mod:`router.dicom.association` - an established association (send, receive, exchange,
  release, abort) and the association requestor. Association PDUs are built and parsed with
  pynetdicom's PDU classes.
- :mod:`router.dicom.part10` - where a Part 10 file's data set starts.
- :mod:`router.dicom.errors` - the exceptions.
"""
