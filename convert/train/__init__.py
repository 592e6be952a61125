"""Training: class folders -> a fine-tuned SqueezeNet checkpoint with its own record and reports.

``train(TrainOptions(...)) -> summary`` is the library entry point; ``python -m convert train`` parses
flags over it. Modules: data (folders, split, datasets), loop (epoch, evaluation), distributed
(torchrun's environment), dsd (dense-sparse-dense), checkpoint, report, fashion_mnist (test data).
"""
from .trainer import TrainOptions, plan, train

__all__ = ["TrainOptions", "plan", "train"]
