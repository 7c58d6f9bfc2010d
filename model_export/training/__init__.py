"""Training: mixed strong/weak batches, schedule, early stopping, checkpoints, resume, DDP, AMP.

>>> from model_export.training import TrainConfig, train
>>> result = train(TrainConfig(model="msdn", preset="small", max_epochs=2), manifest, out_dir="runs/x")
"""

from model_export.training.config import TrainConfig
from model_export.training.trainer import Trainer, TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "Trainer", "train"]
