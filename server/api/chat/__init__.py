"""POST /v1/chat/completions: OpenAI-compatible, with test-time search chosen in the request."""
