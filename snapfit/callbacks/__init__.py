"""Callbacks: one capability per module."""
from .checkpoint import Checkpoint, read_checkpoint
from .nan import NonFiniteLossError, TerminateOnNaN
from .progress import ProgressCallback
from .recorder import Recorder
from .schedule import SGDR, ConstantLR, ParamScheduler, Schedule, StepDecay
from .snapshot import CycleSnapshot
from .swa import SWA, update_bn

__all__ = [
    "Checkpoint", "read_checkpoint", "NonFiniteLossError", "TerminateOnNaN", "ProgressCallback", "Recorder",
    "SGDR", "ConstantLR", "StepDecay", "ParamScheduler", "Schedule", "CycleSnapshot", "SWA", "update_bn",
]
