"""Ingest: the C-STORE and C-ECHO receiver (pynetdicom) that modalities send to."""
