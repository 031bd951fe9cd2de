"""Callbacks: one capability per module."""
from .progress import ProgressCallback
from .recorder import Recorder
from .schedule import SGDR, ConstantLR, ParamScheduler, Schedule
from .snapshot import CycleSnapshot

__all__ = ["ProgressCallback", "Recorder", "SGDR", "ConstantLR", "ParamScheduler", "Schedule", "CycleSnapshot"]
