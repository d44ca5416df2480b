"""Waystation: a spool-first, encrypted, power-loss-safe DICOM router."""

__version__ = "0.1.0"
