"""snapfit: fastai-style training for PyTorch. SGDR with per-cycle snapshots, recorder plots,
LR finder, exact resume."""
from .callbacks import (
    SGDR,
    SWA,
    Checkpoint,
    ConstantLR,
    CSVLogger,
    CycleSnapshot,
    CyclicLR,
    NonFiniteLossError,
    OneCycle,
    ParamScheduler,
    ProgressCallback,
    Recorder,
    Schedule,
    StepDecay,
    TensorBoardCallback,
    TensorBoardLogger,
    TerminateOnNaN,
    update_bn,
)
from .callbacks.lr_finder import SuggestedLRs
from .callbacks.phases import DecayType, TrainingPhase
from .conv_learner import ConvLearner
from .core import (
    Callback,
    CancelBackwardException,
    CancelBatchException,
    CancelEpochException,
    CancelFitException,
    CancelStepException,
    CancelTrainException,
    CancelValidException,
)
from .data import (
    CropType,
    DataBunch,
    EpochShuffleSampler,
    ImageClassifierData,
    RandomCrop,
    RandomDihedral,
    RandomFlip,
    RandomLighting,
    RandomRotate,
    RandomZoom,
    export_digit_mosaics,
    get_cv_idxs,
    load_digits_arrays,
    tfms_from_model,
    tfms_from_stats,
    transforms_basic,
    transforms_side_on,
    transforms_top_down,
)
from .distributed import default_device
from .fit_args import FitArgs
from .interpret import ClassificationInterpretation
from .learner import Learner
from .metrics import (
    EpochMetric,
    accuracy,
    accuracy_multi,
    accuracy_np,
    accuracy_thresh,
    epoch_metric,
    error_rate,
    f1,
    fbeta,
    precision,
    recall,
    whole_epoch,
)
from .models import AdaptiveConcatPool2d, TensorModel, mlp, simple_cnn
from .plots import confusion_matrix, plot_confusion_matrix
from .position import Position

__version__ = "0.1.0"

__all__ = [
    "Learner", "Position", "FitArgs", "TensorModel", "DataBunch", "EpochShuffleSampler", "load_digits_arrays",
    "default_device", "Callback", "CancelBatchException", "CancelEpochException", "CancelFitException",
    "CancelTrainException", "CancelValidException", "CancelBackwardException", "CancelStepException", "SGDR",
    "ConstantLR", "StepDecay", "Schedule", "ParamScheduler", "CycleSnapshot", "Recorder", "ProgressCallback",
    "Checkpoint", "TerminateOnNaN", "NonFiniteLossError", "SWA", "update_bn", "accuracy", "accuracy_np",
    "error_rate", "epoch_metric", "EpochMetric", "mlp", "simple_cnn", "SuggestedLRs", "TrainingPhase", "DecayType",
    "CyclicLR", "OneCycle", "ImageClassifierData", "RandomDihedral", "tfms_from_model", "tfms_from_stats",
    "transforms_basic", "transforms_side_on", "transforms_top_down", "ConvLearner", "AdaptiveConcatPool2d",
    "confusion_matrix", "plot_confusion_matrix", "CSVLogger", "TensorBoardLogger", "TensorBoardCallback",
    "ClassificationInterpretation", "CropType", "RandomCrop", "RandomFlip", "RandomLighting", "RandomRotate",
    "RandomZoom", "export_digit_mosaics", "get_cv_idxs", "accuracy_multi", "accuracy_thresh", "f1", "fbeta",
    "precision", "recall", "whole_epoch",
]
