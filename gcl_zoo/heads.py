"""Classifier heads: the cosine classifier GCL trains, and the stage-2 re-training methods.

Heads map pooled features (N, D) to logits (N, C). A cosine head outputs ``g_j * cos(f, w_j)``, where the
per-class scale ``g`` is 1 unless a re-training method sets it; the loss (and the server, before its softmax)
multiplies the logits by the scale ``s`` the model was trained with.

The three re-training methods of Kang et al. (2020) all land in that one head shape, so a re-trained model
saves, exports and loads exactly like a stage-1 model:
  * cRT re-trains the class weights ``w`` (copied from stage 1 or fresh);
  * LWS keeps ``w`` and learns ``g``;
  * tau-norm trains nothing: ``f_hat . w_j / ||w_j||^tau = ||w_j||^(1 - tau) * cos(f, w_j)``, so it multiplies
    ``g_j`` by ``||w_j||^(1 - tau)`` from the norms stage 1 learnt (tau=1 leaves the classifier exactly as it is).

``g`` is a buffer, not a parameter, unless LWS turns it into one: stage 1 must leave it at 1 (the paper's logits
are ``s * cos``), and an optimizer given ``model.parameters()`` must not find it.
The cosine is computed in float32 even under autocast: in bf16 it is rounded to about 0.004, 0.1 logit at s=30.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["CosineClassifier", "LinearClassifier", "create_head", "prepare_retraining", "RETRAIN_METHODS"]

RETRAIN_METHODS = ("crt", "lws", "tau_norm")


def _scaled_cosine(features: torch.Tensor, weight: torch.Tensor, class_scale: torch.Tensor) -> torch.Tensor:
    cosine = F.linear(F.normalize(features.float(), dim=1), F.normalize(weight.float(), dim=1))
    return cosine * class_scale.float()


def float32_scaled_cosine(features: torch.Tensor, weight: torch.Tensor, class_scale: torch.Tensor) -> torch.Tensor:
    """``g_j * cos(f, w_j)`` in float32 with autocast off (one opaque call in FX graphs, whose proxies have no device).

    TorchScript cannot take a run-time autocast device, so scripted code (also a scripted FX graph) runs it in float32
    as it is.
    """
    if torch.jit.is_scripting():
        return _scaled_cosine(features, weight, class_scale)
    with torch.autocast(device_type=features.device.type, enabled=False):
        return _scaled_cosine(features, weight, class_scale)


torch.fx.wrap("float32_scaled_cosine")


class CosineClassifier(nn.Module):
    """``g_j * cos(f, w_j)``: features and class weights L2-normalised, no bias.

    Weights start with unit norm and are stored un-normalised, so tau-normalisation can still read the norms
    training gave them.
    """

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.in_features = in_features
        self.num_classes = num_classes
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        self.register_buffer("class_scale", torch.ones(num_classes))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        with torch.no_grad():
            self.weight.copy_(F.normalize(self.weight, dim=1))
            self.class_scale.fill_(1.0)

    def learn_class_scale(self) -> None:
        """Make the per-class gain ``g`` a trainable parameter (LWS); its saved name and value stay the same."""
        if not isinstance(self.class_scale, nn.Parameter):
            self.class_scale = nn.Parameter(self.class_scale.detach().clone())
        self.class_scale.requires_grad_(True)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return float32_scaled_cosine(features, self.weight, self.class_scale)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_classes={self.num_classes}"


class LinearClassifier(nn.Linear):
    """Plain linear classifier with bias, for the cross-entropy baselines."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__(in_features, num_classes)
        self.num_classes = num_classes


HEADS = {"cosine": CosineClassifier, "linear": LinearClassifier}


def create_head(kind: str, in_features: int, num_classes: int) -> nn.Module:
    """A fresh head: ``cosine`` (GCL, LDAM) or ``linear`` (cross-entropy baselines)."""
    if kind not in HEADS:
        raise ValueError(f"unknown head {kind!r}; choose one of {', '.join(HEADS)}")
    return HEADS[kind](in_features, num_classes)


@torch.no_grad()
def prepare_retraining(head: nn.Module, method: str = "crt", fresh: bool = False, tau: float = 1.0) -> nn.Module:
    """Set ``head`` (in place) up for a stage-2 method and return it; only the trainable part keeps gradients.

    ``fresh=True`` re-initialises the class weights for cRT instead of starting from stage 1.
    """
    if method not in RETRAIN_METHODS:
        raise ValueError(f"unknown re-training method {method!r}; choose one of {', '.join(RETRAIN_METHODS)}")
    if method != "crt" and not isinstance(head, CosineClassifier):
        raise ValueError(f"re-training method {method!r} needs a cosine head; use 'crt' for a linear head")
    head.requires_grad_(False)
    if method == "crt":
        if fresh:
            head.reset_parameters()
        head.weight.requires_grad_(True)
        if isinstance(head, LinearClassifier):
            head.bias.requires_grad_(True)
    elif method == "lws":
        head.learn_class_scale()
    else:
        head.class_scale.mul_(head.weight.norm(dim=1).pow(1.0 - tau))
    return head
