"""The control API: the one way the console, the CLI and the tests speak to the daemon."""
