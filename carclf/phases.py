"""The phases of a training run, as in Keras' transfer-learning guide.

With `head_epochs` > 0 (and some blocks to unfreeze) the head trains alone first, then the top
`unfreeze_depth` blocks are unfrozen and training goes on at `learning_rate * fine_tune_lr_scale`.
With depth 0 every epoch is a head epoch; with `head_epochs` 0 the blocks train from the first
epoch. Early stopping counts a trial's epochs in its last phase (`final_phase_epochs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from carclf.config import TrainConfig


@dataclass(frozen=True)
class Phase:
    """A stretch of epochs with one set of trainable blocks and one learning rate."""

    name: str  # "head" (backbone frozen) or "fine_tune"
    start: int  # epochs done before the phase
    end: int  # epochs done after it
    unfreeze_depth: int
    learning_rate: float


def plan_phases(train: TrainConfig) -> list[Phase]:
    """The run's phases (see the module docstring); never empty."""
    if train.unfreeze_depth == 0:
        return [Phase("head", 0, train.epochs, 0, train.learning_rate)]
    head_end = min(train.head_epochs, train.epochs)
    phases = [Phase("head", 0, head_end, 0, train.learning_rate)] if head_end else []
    fine_tune_rate = train.learning_rate * (train.fine_tune_lr_scale if head_end else 1.0)
    if head_end < train.epochs:
        phases.append(Phase("fine_tune", head_end, train.epochs, train.unfreeze_depth, fine_tune_rate))
    return phases


def phase_at(phases: Sequence[Phase], epoch: int) -> Phase:
    """The phase that trains epoch `epoch` (1-based)."""
    return next(phase for phase in phases if phase.start < epoch <= phase.end)


def final_phase_epochs(train: TrainConfig, epoch: int) -> int:
    """Epochs of the run's last phase done after epoch `epoch`: 0 throughout a head-only warm-up.

    Early stopping counts its rungs in these (`tuning.scheduler`), so no trial is judged before it
    trains the way it will finish."""
    return max(0, epoch - plan_phases(train)[-1].start)
