from repirl.tasks.arithmetic import ArithmeticConfig, ArithmeticTask
from repirl.tasks.base import Problem, StepCheck, outcome_correct

__all__ = ["ArithmeticConfig", "ArithmeticTask", "Problem", "StepCheck", "outcome_correct"]
