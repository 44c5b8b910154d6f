"""The `bulwark` command line (SPEC §10)."""
