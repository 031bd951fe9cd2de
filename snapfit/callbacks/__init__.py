"""Callbacks: one capability per module."""
from .checkpoint import Checkpoint, read_checkpoint
from .nan import NonFiniteLossError, TerminateOnNaN
from .progress import ProgressCallback
from .recorder import Recorder
from .schedule import SGDR, ConstantLR, ParamScheduler, Schedule
from .snapshot import CycleSnapshot

__all__ = [
    "Checkpoint", "read_checkpoint", "NonFiniteLossError", "TerminateOnNaN", "ProgressCallback", "Recorder",
    "SGDR", "ConstantLR", "ParamScheduler", "Schedule", "CycleSnapshot",
]
