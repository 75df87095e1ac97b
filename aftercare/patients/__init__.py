"""Patient-facing services that act on a patient's own choices (unsubscribe)."""
