"""repirl: train process reward models with rePIRL and serve them next to a policy.

The shared core: trajectory contract, answers, tasks, artifacts, scoring and search. No web code, no training loops.
"""

__version__ = "0.1.0"
