"""Dataset loaders (host-side, NumPy)."""
from . import mnist

__all__ = ["mnist"]
