"""The Waystation hub: receives resumable uploads from clinic units (docs/hub-protocol.md)."""
