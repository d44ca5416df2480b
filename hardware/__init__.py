"""The hardware Waystation runs on: board profiles, UPS HATs, status LEDs (see README.md)."""
