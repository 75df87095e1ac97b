"""Reminders: the state machine, the dispatcher's claim, and delivery through a channel."""
