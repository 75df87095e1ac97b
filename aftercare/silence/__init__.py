"""Silence detection: what did not reach a patient, or got no answer, is flagged for staff."""
