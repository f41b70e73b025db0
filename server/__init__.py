"""The repirl scoring service (FastAPI). Start it with `repirl serve`; build it in code with `create_app(settings)`."""
