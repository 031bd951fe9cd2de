"""Models: small nets, shared layers, and a tensor as a model. (Learners built on torchvision
architectures are in `snapfit.conv_learner`.)"""
from .layers import AdaptiveConcatPool2d
from .simple import mlp, simple_cnn
from .tensor import TensorModel

__all__ = ["mlp", "simple_cnn", "AdaptiveConcatPool2d", "TensorModel"]
