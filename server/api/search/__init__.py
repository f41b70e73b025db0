"""POST /v1/best-of-n and POST /v1/search: test-time search with a policy and a PRM (SSE with stream: true)."""
