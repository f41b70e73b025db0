from __future__ import annotations

from server.api.models.protocol import ModelCard, ModelList
from server.deps import AppState


def list_models(state: AppState) -> ModelList:
    cards = [ModelCard(id=name, kind="prm", root=str(rt.scorer.prm_dir), revision=rt.scorer.revision,
                       format=rt.config.format, engine=rt.scorer.engine,
                       default_aggregation=rt.config.default_aggregation, step_separator=rt.config.step_separator,
                       max_model_len=rt.max_tokens)
             for name, rt in state.runtimes.items()]
    cards += [ModelCard(id=name, kind="policy", root=p.root, max_model_len=getattr(p.engine, "context_tokens", None))
              for name, p in state.policies.items()]
    return ModelList(data=cards)
