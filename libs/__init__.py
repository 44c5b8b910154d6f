"""Code every Bulwark service shares: bus, settings, logging, storage, resilience, runtime."""
