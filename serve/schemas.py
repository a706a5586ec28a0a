"""The server's request and response schemas, and the OpenAPI document that states them exactly.

FastAPI derives most of the document from the routes; the bodies the routes read themselves (``/predict``'s
multipart, JSON and raw-image forms, the v2 protocol's JSON and binary requests) are written here, with the limits
the settings impose (``maxItems`` = ``--max-images``), so a client or gateway that validates against the document
agrees with the server. What a schema cannot say (that bytes decode as an image, that a v2 tensor's data fills its
shape) is in the descriptions, and answered 422/400.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field

from .parsing import FORM_FIELDS, PredictParameters, PredictRequest
from .priors import ESTIMATED, PRIOR_WORDS, text_prior_pattern
from .streams import STREAM_NAME_PATTERN

__all__ = ["LabelScore", "PredictResponse", "ErrorResponse", "StatusResponse", "ModelDescription", "ModelsResponse",
           "PriorShift", "PriorStreamResponse", "PriorUpdate", "PRIOR_ERRORS",
           "ERRORS", "V2_ERRORS", "predict_body", "PREDICT_ANSWERS", "V2_INFER_BODY", "install_openapi",
           "prior_schemas"]

RAW_IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "application/octet-stream")

class LabelScore(BaseModel):
    label: str
    score: float = Field(..., description="the label's calibrated probability (softmax of the scaled cosine "
                                          "logits), moved to the request's target_prior")


class PredictResponse(BaseModel):
    model: str = Field(..., description="id of the model that answered")
    predictions: list[list[LabelScore]] = Field(
        ..., description="per input image, in request order: the top_k labels sorted by score")


class ErrorResponse(BaseModel):
    error: str = Field(..., description="what is wrong with the request and how to fix it")


class StatusResponse(BaseModel):
    status: str
    models: list[str] = []


class ModelDescription(BaseModel):
    id: str
    num_classes: int
    labels: list[str]
    logit_scale: float
    device: str
    runtime: str = Field(..., description="torch, openvino or onnxruntime")
    precision: str = Field(..., description="what the runtime computes in: f32, bf16 or int8")
    precision_speeds: dict[str, float] | None = Field(
        None, description="with --precision auto, when the runtime offered a reduced precision: the images/s each "
                          "precision reached on a full batch at start-up (bf16 serves only when at least 1.1x float32)")
    graph: str | None = Field(None, description="where an ONNX runtime's graph came from")
    optimization: str | None = Field(None, description="PyTorch runtime only: trace, eager or compile")
    autocast: str | None
    inference_streams: int = Field(..., description="batches computed at once")
    threads_per_stream: int = Field(..., description="intra-op CPU threads of each stream")
    preprocessing: dict[str, Any]
    implied_prior: list[float] | None = Field(
        ..., description="the class prior the model's calibrated scores imply, which target_prior is measured "
                         "against (null: a plain classifier, taken as uniform)")
    has_train_class_counts: bool = Field(..., description="whether target_prior 'train' can be used for this model")
    target_prior: str | list[float] = Field(..., description="the prior a request without target_prior gets "
                                                                   "(--target-prior)")


class PriorShift(BaseModel):
    """How far a stream's estimate is from the source prior, and how EM reached it."""

    log_likelihood_ratio: float = Field(..., description="of the estimate against the source prior, over the window")
    shifted: bool = Field(..., description="whether a shift was taken (false: the no-shift test held and the "
                                           "estimate is the source prior); true for a PUT prior")
    total_variation: float = Field(..., description="half the L1 distance between the estimate and the source "
                                                    "prior (0: none; 1: disjoint)")
    iterations: int = Field(..., description="EM iterations of the last estimate (0: a PUT prior, or no images)")
    converged: bool


class PriorStreamResponse(BaseModel):
    model: str = Field(..., description="the model's name, as in the route")
    stream: str
    window: int = Field(..., description="images the stream keeps (--prior-window)")
    images: int = Field(..., description="images of traffic in the window")
    put_images: int = Field(..., description="window places a PUT prior still holds (it counts as a full window "
                                             "of images, replaced one by one by new traffic)")
    estimated: list[float] = Field(..., description="the stream's estimated class prior, in label order: what "
                                                    "target_prior 'estimated' answers with")
    source: list[float] = Field(..., description="the model's source prior, which the estimate is measured against")
    shift: PriorShift


class PriorUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prior: list[float] = Field(..., description="one non-negative weight per class, in the model's label order, not "
                                                "all zero (normalised by the server)")


class ModelsResponse(BaseModel):
    default: str | None
    models: list[ModelDescription]


_ERROR_TEXTS = {
    401: "missing or wrong API key", 404: "unknown model", 408: "the body did not arrive within --body-timeout-s",
    413: "payload, image count or pixel count too large", 415: "unsupported content or image type",
    422: "not an image, corrupt image, bad base64/JSON, top_k or target_prior",
    503: "models still loading, queue or body budget full, shutting down (see Retry-After), or a model's device "
         "failed for good (restart the server)",
    504: "not answered within the request timeout",
}
ERRORS = {status: {"model": ErrorResponse, "description": text} for status, text in _ERROR_TEXTS.items()}
V2_ERRORS = {400: {"model": ErrorResponse, "description": "a malformed v2 request: tensor names, types, shapes, "
                                                          "data or binary sizes that do not fit"}, **ERRORS}
# the probes and descriptions answer 503 while the models load (or the server drains, or a device failed for good)
NOT_READY = {503: ERRORS[503]}
UNKNOWN_MODEL = {404: ERRORS[404], 503: ERRORS[503]}
PRIOR_ERRORS = {400: {"model": ErrorResponse, "description": "a PUT body that is not JSON"}, 401: ERRORS[401], 404: {"model": ErrorResponse, "description": "unknown model or stream"},
                422: {"model": ErrorResponse, "description": "a bad stream name or prior, or the prior streams are "
                                                             "off (--prior-window 0)"}, 503: ERRORS[503]}


def _ref(component: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{component}"}


def _text_field_schema(name: str) -> dict[str, Any]:
    """A request parameter's schema as a form field or query parameter carries it: its JSON schema without the
    null (absent is the default), the prior's text encoding for ``target_prior``."""
    if name == "model":
        return {"type": "string", "description": "which loaded model answers (default: the first)"}
    if name == "target_prior":
        return _ref("TargetPriorText")
    schema = PredictParameters.model_json_schema()["properties"][name]
    given = next(option for option in schema.get("anyOf", [schema]) if option.get("type") != "null")
    return {**given, "description": schema["description"]}


_FORM_FIELD_SCHEMAS = {name: _text_field_schema(name) for name in FORM_FIELDS}
_IMAGE_FILE = {"type": "string", "format": "binary",
               "description": "an image file (JPEG, PNG, WebP, BMP, GIF, TIFF); other bytes answer 422"}


def predict_body(max_images: int) -> dict[str, Any]:
    """``openapi_extra`` of ``/predict``: every body form it reads, with the request limits."""
    return {
        "requestBody": {"required": True, "content": {
            "multipart/form-data": {"schema": {"type": "object", "required": ["files"], "properties": {
                "files": {"type": "array", "items": _IMAGE_FILE, "minItems": 1, "maxItems": max_images,
                          "description": f"1 to {max_images} image files"},
                **{name: _FORM_FIELD_SCHEMAS[name] for name in FORM_FIELDS}}, "additionalProperties": False}},
            "application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}},
            **{kind: {"schema": {**_IMAGE_FILE, "description": "one image file as the whole body"}}
               for kind in RAW_IMAGE_TYPES},
        }},
        "parameters": [{"name": name, "in": "query", "required": False, "schema": _FORM_FIELD_SCHEMAS[name],
                        "description": "the form's or JSON body's own value wins"} for name in FORM_FIELDS],
    }


_LABEL_SCORES = {"type": "array", "items": {"$ref": "#/components/schemas/LabelScore"}}
PREDICT_ANSWERS = {"description": "JSON and raw-image requests: the Hugging Face task's list of {label, score} "
                                  "(one list per image when inputs is a list); multipart: the envelope",
                   "content": {"application/json": {"schema": {"anyOf": [
                       _LABEL_SCORES, {"type": "array", "items": _LABEL_SCORES},
                       {"$ref": "#/components/schemas/PredictResponse"}]}}}}

_V2_TENSOR = {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
    "name": {"type": "string", "enum": ["image", "input"]},
    "datatype": {"type": "string", "enum": ["BYTES", "FP32"]},
    "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
    "data": {"type": "array", "description": "image: base64 strings (one per image); input: the flattened floats"},
    "parameters": {"type": "object", "properties": {"binary_data_size": {"type": "integer", "minimum": 0}}},
}, "description": "image (BYTES [N], encoded files) or input (FP32 [N, 3, H, W], pre-processed); the data must fill "
                  "the shape: a request that does not fit answers 400"}
V2_INFER_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"},
        "inputs": {"type": "array", "items": _V2_TENSOR, "minItems": 1, "maxItems": 1},
        "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string", "enum": ["probabilities", "labels"]},
            "parameters": {"type": "object", "properties": {"binary_data": {"type": "boolean"}}}}}},
        "parameters": {"type": "object", "properties": {
            "top_k": {"type": "integer", "minimum": 1}, "target_prior": _ref("TargetPrior"),
            "prior_stream": {"type": "string", "pattern": STREAM_NAME_PATTERN}}}}}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary", "description": (
        "the binary tensor extension: the JSON request, then the tensors' bytes; the JSON part's length in the "
        "Inference-Header-Content-Length header")}},
}}}


_PRIOR_TEXT = ("uniform (the scores as calibrated), train (the model's training class counts, normalised), estimated "
               "(the prior of the prior_stream's recent traffic, this request's images included) or one "
               "non-negative weight per class in the model's label order, not all zero")


def prior_schemas(counts: Sequence[int], train: bool, estimating: bool = True) -> dict[str, dict[str, Any]]:
    """The schemas of ``target_prior`` as JSON carries it (``TargetPrior``) and as text (``TargetPriorText``, in a
    query string or form field), and of a prior's weights alone (``PriorWeights``, what a stream's PUT takes): a
    list holds as many weights as a served model has classes (``counts``; any number while the models load),
    "train" is offered when every served model knows its training class counts, "estimated" when the prior
    streams are on (``estimating``)."""
    lengths = [{"minItems": count, "maxItems": count} for count in counts] or [{"minItems": 1}]
    offered = [word for word in PRIOR_WORDS if (train or word != "train") and (estimating or word != ESTIMATED)]
    words = {"type": "string", "enum": offered}
    weights = [{"type": "array", "items": {"type": "number", "minimum": 0}, **length,
                "contains": {"type": "number", "exclusiveMinimum": 0}} for length in lengths]
    # a plain decimal weight is positive exactly when it holds a digit 1-9: so "not all zero" is that pattern
    text = {"type": "string", "allOf": [{"pattern": text_prior_pattern(counts)}, {"pattern": "[1-9]"}]}
    return {"PriorWeights": {"anyOf": weights, "description": "one non-negative weight per class in the model's label "
                                                              "order, not all zero"},
            "TargetPrior": {"anyOf": [words, *weights], "description": f"the deployment's class prior: {_PRIOR_TEXT}; "
                                                                     "a list as a JSON list of numbers"},
            "TargetPriorText": {"anyOf": [words, text], "description": f"the deployment's class prior: {_PRIOR_TEXT}; "
                                                                       "a list as plain decimals separated by commas, "
                                                                       "optionally in square brackets"}}


def install_openapi(app: FastAPI, max_images: int, model_names: list[str], needs_key: bool,
                    served: Callable[[], Sequence[Any]], estimating: bool = True) -> None:
    """OpenAPI with the bodies the routes read themselves and the schemas they write, with the request limits;
    ``{name}`` of the v2 routes is one of ``model_names``, and a server without an API key declares no security.
    ``served()`` are the loaded model runners, whose class counts and training counts bound ``target_prior``: none
    while the models load, and the document is kept only once they are known."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            runners = served()
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(prior_schemas(sorted({r.num_classes for r in runners}),
                                            all(r.train_prior is not None for r in runners), estimating))
            components["PriorUpdate"]["properties"]["prior"] = {
                **_ref("PriorWeights"), "description": components["PriorUpdate"]["properties"]["prior"]["description"]}
            for model in (PredictRequest, PredictResponse):  # the bodies the /predict route reads and writes
                model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(model_schema.pop("$defs", {}))
                components[model.__name__] = model_schema
            parameters = components["PredictParameters"]["properties"]
            parameters["target_prior"] = {"anyOf": [_ref("TargetPrior"), {"type": "null"}],
                                          "description": parameters["target_prior"]["description"]}
            inputs = components["PredictRequest"]["properties"]["inputs"]
            for option in inputs.get("anyOf", []):
                if option.get("type") == "array":
                    option.update(minItems=1, maxItems=max_images)
            for path, operations in schema["paths"].items():
                for operation in operations.values():
                    if not needs_key:
                        operation.pop("security", None)
                    for parameter in operation.get("parameters", []):
                        if (path.startswith("/v2/models/{name}") and parameter["name"] == "name") or \
                                (path == "/models/{model}/prior" and parameter["name"] == "model"):
                            parameter["schema"]["enum"] = list(model_names)
                            parameter["description"] = "a loaded model's name (GET /models)"
            if not needs_key:
                components.pop("securitySchemes", None)
                schema["components"].pop("securitySchemes", None)
            if not runners:
                return schema
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]



