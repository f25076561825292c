"""Data sources (CIFAR files, image folders and archives, synthetic) -> cached uint8 tensors."""

from .dataset import ImageData

__all__ = ["ImageData"]
