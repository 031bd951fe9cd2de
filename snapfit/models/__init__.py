"""Model builders: small nets, and vision learners on torchvision architectures."""
from .conv_learner import AdaptiveConcatPool2d, ConvLearner
from .simple import mlp, simple_cnn

__all__ = ["mlp", "simple_cnn", "ConvLearner", "AdaptiveConcatPool2d"]
