"""Inbound SMS: classify a patient's reply and act on it (opt-out, HELP, check-in, warnings)."""
