from repirl.scoring.aggregate import AGGREGATIONS, aggregate
from repirl.scoring.base import Item, StepScorer, StepScores

__all__ = ["AGGREGATIONS", "aggregate", "Item", "StepScorer", "StepScores"]
