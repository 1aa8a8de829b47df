"""The sweep's objective: the metric every trial is judged by, and which way is better.

The one home of that choice. Optuna's study direction and its name on optuna-dashboard, ASHA's
metric and mode, the trainable's reported result, trial.json's recorded value, the leaderboard's
ranking, ``sweep status``/``list`` and the report's best-so-far curve all read it from here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Objective:
    """A metric and its direction.

    ``metric`` is the key of the value in the trainable's result after every fold (the running mean
    over the folds done) and in ``trainer.results.summarise``'s means; ``display_name`` is what the
    study calls it on optuna-dashboard.
    """

    metric: str
    direction: Literal["max", "min"]
    display_name: str

    @property
    def optuna_direction(self) -> Literal["maximize", "minimize"]:
        return "maximize" if self.direction == "max" else "minimize"

    @property
    def record_field(self) -> str:
        """The trial.json field holding the trial's mean over its finished folds."""
        return f"mean_{self.metric}"

    def better(self, value: float, than: float) -> bool:
        """Whether ``value`` beats ``than`` (NaN beats nothing)."""
        return value > than if self.direction == "max" else value < than

    def rank_key(self, value: float) -> float:
        """Sort key putting the best value first and NaN last."""
        if not math.isfinite(value):
            return math.inf
        return -value if self.direction == "max" else value


#: What a sweep optimises: the mean cross-validation Dice, higher is better.
OBJECTIVE = Objective(metric="dice", direction="max", display_name="mean CV Dice")
