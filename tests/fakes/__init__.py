"""Recording fakes of outside services, reached over real sockets by the real client libraries."""
