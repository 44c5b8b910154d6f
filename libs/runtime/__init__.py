"""Running Bulwark: embedded infrastructure, the service runner and the process supervisor."""
