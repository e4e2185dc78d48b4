"""Training: many sparse dictionaries from one activation stream, with schedules, checkpoints and resume."""

from saescope.train.schedules import TargetL0Controller, learning_rate
from saescope.train.settings import SAESpec, TrainConfig
from saescope.train.trainer import (
    BadActivationsError,
    TrainedDictionary,
    Trainer,
    TrainingDivergedError,
)

__all__ = [
    "BadActivationsError",
    "SAESpec",
    "TargetL0Controller",
    "TrainConfig",
    "TrainedDictionary",
    "Trainer",
    "TrainingDivergedError",
    "learning_rate",
]
