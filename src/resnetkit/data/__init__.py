"""Data sources (CIFAR files, image folders and archives, synthetic) -> cached uint8 tensors."""

from .dataset import ImageData
from .prepare import KINDS, channel_stats, prepare_data

__all__ = ["ImageData", "KINDS", "channel_stats", "prepare_data"]
