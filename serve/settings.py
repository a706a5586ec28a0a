"""Server settings: one pydantic model, filled from command-line flags over ``GCL_ZOO_SERVE_*`` variables.

Every knob the server has lives here, so the app, the batching engine and the tests read the same validated
values, and a bad value fails at start-up with a message naming the setting.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from .priors import ESTIMATED, PriorSpec, read_prior_setting

__all__ = ["ServeSettings", "ENV_PREFIX", "DEFAULT_MODEL"]

ENV_PREFIX = "GCL_ZOO_SERVE_"
DEFAULT_MODEL = "gcl_resnet32_cifar10_lt"


class ServeSettings(BaseModel):
    """Validated server configuration (see ``gcl-zoo serve --help`` for what each field does)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    models: list[str] = Field(
        default_factory=lambda: [DEFAULT_MODEL], min_length=1,
        description="zoo name, hf-hub:ORG/NAME or local-dir:PATH; repeat or list several to serve them side by side "
                    f"(the first is the default; default: {DEFAULT_MODEL})")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where the models run (auto: CUDA when present)")
    host: str = Field("127.0.0.1", description="address to bind (0.0.0.0 for every interface)")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on")
    max_batch_size: int = Field(64, ge=1, le=4096, description="most images in one forward pass")
    max_wait_ms: float = Field(5.0, ge=0, le=10_000, description="longest a batch waits to fill up")
    max_queue: int = Field(1024, ge=1, description="most images waiting per model; more answer 503")
    request_timeout_s: float = Field(30.0, gt=0, description="a request not answered within this answers 504")
    max_body_mb: float = Field(10.0, gt=0, description="largest request body in MB")
    max_images: int = Field(64, ge=1, description="most images in one request")
    max_pixels: int = Field(40_000_000, ge=1, description="most pixels in one image (decompression-bomb guard)")
    max_inflight_mb: float = Field(256.0, gt=0, description="most MB of request bodies held at once; beyond, 503 with "
                                                            "Retry-After")
    header_timeout_s: float = Field(10.0, gt=0, description="408 and close when a request's line and headers take "
                                                            "longer")
    body_timeout_s: float = Field(30.0, gt=0, description="408 when a request's body takes longer from its start")
    shutdown_grace_s: float = Field(30.0, ge=0, description="on SIGTERM, how long requests in flight may still finish")
    default_top_k: int = Field(5, ge=1, description="labels per image when a request names no top_k")
    target_prior: str = Field(
        "uniform", description="the deployment's class prior where a request names no target_prior: uniform (the "
                               "scores as calibrated), train (each model's training class counts), estimated (the "
                               "prior of the request's stream's recent traffic, see --prior-window), or a JSON file "
                               "holding a list of class weights (every model) or a mapping from model id to a list, "
                               "uniform, train or estimated")
    prior_window: int = Field(
        1024, ge=0, le=65_536, description="images per prior stream that target_prior 'estimated' is estimated from "
                                           "(0 turns estimation and the streams off)")
    max_prior_streams: int = Field(
        64, ge=1, le=10_000, description="prior streams kept per model; a new one beyond drops the least recently "
                                         "used (memory: streams x window x classes x 8 bytes per model)")
    api_key_env: str | None = Field(
        "GCL_ZOO_API_KEY", description="environment variable holding the API key /predict requires; unset or empty "
                                       "variable: no key")
    optimize: Literal["auto", "eager", "trace", "compile"] = Field(
        "auto", description="auto: TorchScript trace on CPU, eager (bf16 autocast) on CUDA; compile: torch.compile "
                            "per batch bucket")
    runtime: Literal["auto", "torch", "openvino", "onnxruntime"] = Field(
        "auto", description="auto: OpenVINO on CPU when installed (pip install 'gcl-zoo[openvino]'), else PyTorch; "
                            "PyTorch on CUDA; onnxruntime: ONNX Runtime (the [onnxruntime] extra); both run the "
                            "model's ONNX graph on the CPU")
    precision: Literal["auto", "f32", "int8"] = Field(
        "auto", description="auto: bf16 where it pays (OpenVINO on CPUs with bf16 instructions: timed against "
                            "float32 at start-up, kept only when at least 1.1x faster; bf16 autocast on CUDA); "
                            "f32: float32 throughout; int8: the exported int8 graph (model.int8.onnx, gcl-zoo export "
                            "--int8-calibration) in OpenVINO or ONNX Runtime")
    inference_streams: int | None = Field(
        None, ge=1, description="batches computed at once, each on an equal share of the CPU cores, on CUDA each on "
                                "its own CUDA stream (default: 2 on CPU, 1 with compile or on CUDA)")
    decode_workers: int = Field(default_factory=lambda: max(1, min(4, os.cpu_count() or 1)), ge=1,
                                description="threads decoding images (default: the cores, up to 4)")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field("info", description="log verbosity")
    _target_priors: dict[str, PriorSpec] = PrivateAttr(default_factory=dict)  # per model, read from target_prior

    @field_validator("models")
    @classmethod
    def _distinct_models(cls, models: list[str]) -> list[str]:
        if len(set(models)) != len(models):
            raise ValueError(f"each model may be given once, got {models}")
        return models

    @model_validator(mode="after")
    def _queue_holds_a_request(self) -> ServeSettings:
        if self.max_queue < self.max_images:
            raise ValueError(f"max_queue ({self.max_queue}) must be at least max_images ({self.max_images}), "
                             "or a full-size request could never be queued")
        return self

    @model_validator(mode="after")
    def _budget_holds_a_body(self) -> ServeSettings:
        if self.max_inflight_mb < self.max_body_mb:
            raise ValueError(f"max_inflight_mb ({self.max_inflight_mb:g}) must be at least max_body_mb "
                             f"({self.max_body_mb:g}), or a full-size request could never be read")
        return self

    @model_validator(mode="after")
    def _read_target_prior(self) -> ServeSettings:
        """Read a prior file once, at start-up, so a bad one stops the server before anything loads."""
        self._target_priors = read_prior_setting(self.target_prior, self.models)
        estimated = [model for model, spec in self._target_priors.items() if spec == ESTIMATED]
        if estimated and self.prior_window == 0:
            raise ValueError(f"target_prior 'estimated' (for {', '.join(estimated)}) needs prior streams, but "
                             "prior_window is 0; give --prior-window a window of images (e.g. 1024)")
        return self

    def target_prior_for(self, model_id: str) -> PriorSpec:
        """The default prior of a served model (its class count is checked when it loads)."""
        return self._target_priors[model_id]

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    @property
    def max_inflight_bytes(self) -> int:
        return int(self.max_inflight_mb * 1024 * 1024)

    @property
    def api_key(self) -> str | None:
        """The key clients must send, read from ``api_key_env`` at call time; None when unset (no auth)."""
        return (os.environ.get(self.api_key_env) or None) if self.api_key_env else None

    @classmethod
    def from_sources(cls, flags: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> ServeSettings:
        """Settings from ``GCL_ZOO_SERVE_<FIELD>`` variables, overridden by the ``flags`` that are not None.

        List fields read comma-separated values from the environment (``GCL_ZOO_SERVE_MODELS=a,b``).
        """
        environ = os.environ if environ is None else environ
        values: dict = {}
        for name, _field in cls.model_fields.items():
            raw = environ.get(ENV_PREFIX + name.upper())
            if raw is not None:
                values[name] = [v.strip() for v in raw.split(",") if v.strip()] if name == "models" else raw
        values.update({k: v for k, v in flags.items() if v is not None})
        return cls(**values)
