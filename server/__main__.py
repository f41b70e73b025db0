"""`python -m server ...` = `repirl serve ...` (vLLM engines need a `__main__` guard: this is it)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

if __name__ == "__main__":
    import typer

    from server.cli import serve

    typer.run(serve)
