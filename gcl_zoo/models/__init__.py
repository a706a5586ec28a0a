"""Models: the GCL wrapper around any timm backbone, CIFAR ResNets and the zoo registry (registered on import)."""
from . import cifar_resnet, zoo  # noqa: F401  (registration side effects)
from .cifar_resnet import CifarResNet
from .create import create_gcl_model
from .gcl import GCLModel

__all__ = ["CifarResNet", "GCLModel", "create_gcl_model"]
