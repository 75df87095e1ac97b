"""Messages: pure rendering of patient-facing SMS and email from templates, and SMS encoding."""
