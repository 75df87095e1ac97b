"""Planning: a pure function from a session and its regimen to reminders with UTC due times."""
