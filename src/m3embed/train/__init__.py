"""Training: unified fine-tuning with self-knowledge distillation, split-batch, cross-device negatives."""

from .config import ConfigError, TrainConfig
from .data import DataError, TrainBatch, TrainData, TrainDataset
from .distributed import DistributedError
from .losses import LossConfig, LossOutput, Reps, m3_loss
from .trainer import M3Trainer, NonFiniteLossError, TrainResult, latest_checkpoint

__all__ = [
    "ConfigError", "DataError", "DistributedError", "LossConfig", "LossOutput", "M3Trainer", "NonFiniteLossError",
    "Reps", "TrainBatch", "TrainConfig", "TrainData", "TrainDataset", "TrainResult", "latest_checkpoint", "m3_loss",
]
