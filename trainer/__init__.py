"""Trainer: bootstrap (tokenizer, tiny models, SFT), rePIRL and baselines, evaluation, CLI."""
