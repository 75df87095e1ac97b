"""The audit log: who did what to which patient, and when (ids only, so it survives erasure)."""
