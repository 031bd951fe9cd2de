"""Model builders."""
from .simple import mlp, simple_cnn

__all__ = ["mlp", "simple_cnn"]
