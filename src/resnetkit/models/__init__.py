"""The ResNet family: blocks, the one builder, and the registry of named variants."""

from .blocks import BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck, ShortcutA
from .registry import ModelInfo, UnknownModelError, create_model, list_models, model_info, register
from .resnet import ResNet

__all__ = [
    "BasicBlock", "Bottleneck", "PreActBasicBlock", "PreActBottleneck", "ShortcutA", "ResNet",
    "ModelInfo", "UnknownModelError", "create_model", "list_models", "model_info", "register",
]
