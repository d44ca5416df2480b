"""The unit's health: liveness of the router's threads, the clock, storage, link and power,
and how they reach systemd (sd_notify), journald, metrics and the control API."""
