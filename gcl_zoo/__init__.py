"""gcl-zoo: Gaussian Clouded Logit (GCL) long-tailed classification as a timm plugin.

Importing the package registers the zoo models with timm::

    import timm, gcl_zoo
    model = timm.create_model("gcl_resnet32_cifar10_lt", pretrained=True)
"""
from .heads import CosineClassifier, LinearClassifier, create_head, prepare_retraining
from .losses import (
                     BalancedSoftmaxLoss,
                     CrossEntropyLoss,
                     FocalLoss,
                     GCLLoss,
                     LDAMLoss,
                     LogitAdjustedLoss,
                     cloud_sizes,
                     create_loss,
                     drw_class_weights,
)
from .metrics import accuracy_report, shot_groups
from .models import CifarResNet, GCLModel, create_gcl_model
from .sampling import create_sampler

__version__ = "0.1.0"

__all__ = [
    "GCLLoss", "CrossEntropyLoss", "FocalLoss", "LDAMLoss", "LogitAdjustedLoss", "BalancedSoftmaxLoss",
    "cloud_sizes", "create_loss", "drw_class_weights",
    "CosineClassifier", "LinearClassifier", "create_head", "prepare_retraining",
    "GCLModel", "CifarResNet", "create_gcl_model",
    "create_sampler", "accuracy_report", "shot_groups", "__version__",
]
