"""One package per API (vLLM entrypoints style): protocol.py (schemas), serving.py (logic), router.py (HTTP)."""
