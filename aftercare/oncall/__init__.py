"""On-call staff: the rota, pages about emergency and urgent flags, acknowledgement and
escalation, and the clinic's opening hours."""
