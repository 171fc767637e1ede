"""The voicegrid worker: session jobs, leases and failover, commands, drain, metrics; and the
process entry point (``voicegrid`` CLI)."""
