"""SMS through Twilio: the transport, its HTTP layer, pacing, sender pool and codes."""
