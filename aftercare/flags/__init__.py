"""Flags: what staff must look at (urgent replies, failed deliveries, check-in concerns)."""
