"""What a request's model resolves to: the loaded models with their batching engines and defaults.

``ServedModels`` is the narrow view of the server a protocol's ``decode_request`` gets (``serve.pipeline``): which
model answers, its default prior, and the request defaults and limits, never the rest of the server's state.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .batching import BatchingEngine
from .errors import RequestError
from .priors import DefaultPrior
from .runner import ModelRunner
from .streams import PriorStreams

__all__ = ["ServedModel", "ServedModels"]


@dataclass(frozen=True)
class ServedModel:
    """One loaded model: its runner, the engines batching its encoded images and its pre-processed tensors (the
    v2 ``FP32`` input), the target prior a request that names none gets (a vector, or ``"estimated"``), and its
    prior streams (``serve.streams``; None or a window of 0: estimation off)."""

    runner: ModelRunner
    images: BatchingEngine
    tensors: BatchingEngine
    default_prior: DefaultPrior
    streams: PriorStreams | None = None


@dataclass
class ServedModels:
    """The models a server answers with, in load order (the first is the default), and what every request may
    ask for: at most ``max_images`` images, ``default_top_k`` labels when it names no ``top_k``."""

    max_images: int
    default_top_k: int
    served: dict[str, ServedModel] = field(default_factory=dict)

    def pick(self, model_id: str | None) -> ServedModel:
        """The model ``model_id`` names (the first loaded one when None); 404 names the loaded ones."""
        if model_id is None:
            return next(iter(self.served.values()))
        if model_id not in self.served:
            raise RequestError(404, f"unknown model {model_id!r}; this server has {', '.join(self.served)} "
                                    "(see GET /models)")
        return self.served[model_id]

    def runners(self) -> dict[str, ModelRunner]:
        return {model_id: model.runner for model_id, model in self.served.items()}
