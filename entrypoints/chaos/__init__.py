"""Chaos experiments run against a live system (`bulwark chaos list|run`)."""
