"""Callbacks: one capability per module."""
from .checkpoint import Checkpoint, read_checkpoint
from .freeze import FreezeBatchNorm
from .interrupt import DeferredInterrupt
from .loggers import CSVLogger, TensorBoardCallback, TensorBoardLogger
from .nan import NonFiniteLossError, TerminateOnNaN
from .precision import MixedPrecision
from .progress import ProgressCallback
from .recorder import Recorder
from .schedule import SGDR, ConstantLR, CyclicLR, OneCycle, ParamScheduler, Schedule, StepDecay
from .snapshot import CycleSnapshot, SaveBest
from .swa import SWA, update_bn

__all__ = [
    "Checkpoint", "read_checkpoint", "FreezeBatchNorm", "DeferredInterrupt", "NonFiniteLossError", "TerminateOnNaN",
    "MixedPrecision", "ProgressCallback", "Recorder", "SGDR", "ConstantLR", "StepDecay", "CyclicLR", "OneCycle",
    "ParamScheduler", "Schedule", "CycleSnapshot", "SaveBest", "SWA", "update_bn", "CSVLogger", "TensorBoardLogger",
    "TensorBoardCallback",
]
