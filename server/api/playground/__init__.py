"""GET /playground: a page served by the service itself that calls the public API (score, rerank, search)."""
