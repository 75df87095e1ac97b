"""Operations: readiness, status, metrics and structured logs."""
