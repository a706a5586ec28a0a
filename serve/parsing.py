"""Request parsing and validation: what a client can get wrong in a request's shape is caught here, with the HTTP
status and a message that names the input and the fix.

The checks run cheapest first: the body's shape (JSON schema, multipart parts, base64) and its parameters here,
then each image's header and only then the full decode (``serve.decoding``). ``parse_predict_request`` reads
``/predict``'s three body forms; what both protocols share is beside it: the request parameters
(``PredictParameters``, one pydantic model, read from JSON or from text), image counts, and ``answer_options``,
which checks the parameters against the model that answers and fills in the defaults.

A new request parameter is a field of ``PredictParameters`` and of ``AnswerOptions`` (checked in
``answer_options``), used by the pipeline step it is for; the body forms, the query string and v2 read it as
they are.
"""
from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from gcl_zoo.prior import PriorError

from .decoding import SUPPORTED_FORMATS, ImagePayload
from .errors import RequestError
from .multipart import FormError, FormPart, parse_form
from .priors import (
    DEFAULT_OUTPUT_FUNCTION,
    ESTIMATED,
    OUTPUT_TRANSFORMS,
    PriorSpec,
    prior_from_json,
    prior_from_text,
    resolve_prior,
)
from .served import ServedModel
from .streams import DEFAULT_STREAM, STREAM_NAME_PATTERN

__all__ = ["PredictRequest", "PredictParameters", "payloads_from_json", "payloads_from_form", "check_counts",
           "check_top_k", "decode_base64", "parse_predict_request", "query_parameters", "ParsedRequest",
           "OUTPUT_FUNCTIONS", "RAW_BODY_TYPES", "FORM_FIELDS", "body_over_query", "read_parameters",
           "AnswerOptions", "answer_options", "describe_validation"]


ACCEPTED_PART_TYPES = ("image/", "application/octet-stream")
# raw bodies: one image as the whole request, as Hugging Face Inference Endpoints and TorchServe take it
RAW_BODY_TYPES = ("image/", "application/octet-stream")

_DATA_URI = re.compile(r"^data:[\w/+.-]*;base64,", re.IGNORECASE)

OUTPUT_FUNCTIONS = tuple(OUTPUT_TRANSFORMS)  # the names a request may give, from the one table that applies them
OutputFunction = Literal[OUTPUT_FUNCTIONS]  # type: ignore[valid-type]


class PredictParameters(BaseModel):
    """The request parameters (the Hugging Face image-classification task's, and ours); v2 takes them too, but
    ``function_to_apply``. From text (a form field, the query string) a list prior is comma-separated weights."""

    model_config = ConfigDict(extra="forbid")
    top_k: int | None = Field(None, ge=1, description="how many labels to return per image, best first (more "
                                                       "than the class count gives all)")
    function_to_apply: OutputFunction | None = Field(
        None, description=f"how scores come from the scaled cosine logits: {DEFAULT_OUTPUT_FUNCTION} (the default), "
                          "sigmoid, or none (the logits themselves)")
    target_prior: Literal["uniform", "train", "estimated"] | list[float] | None = Field(
        None, description="the deployment's class prior the scores are moved to (default: the server's, "
                          "--target-prior); estimated: the prior of the prior_stream's recent traffic, this "
                          "request's images included")
    prior_stream: str | None = Field(
        None, pattern=STREAM_NAME_PATTERN, description="the prior stream this request's images join (default: "
                                                       f"{DEFAULT_STREAM!r} when target_prior is estimated, none "
                                                       "otherwise): 1-64 letters, digits, '_', '.', ':' or '-'")

    @field_validator("target_prior", mode="before")
    @classmethod
    def _read_prior(cls, value: Any, info: ValidationInfo) -> PriorSpec | None:
        if value is None:
            return None
        from_text = isinstance(value, str) and (info.context or {}).get("text", False)
        try:
            return prior_from_text(value) if from_text else prior_from_json(value)
        except PriorError as exc:  # its message as it is, without pydantic's "Value error, "
            raise PydanticCustomError("target_prior", "{message}", {"message": str(exc)}) from None


# the parameters a form field or the query string may carry: the model, and every request parameter
FORM_FIELDS = ("model", *PredictParameters.model_fields)


@dataclass(frozen=True)
class ParsedRequest:
    """What a ``/predict`` request asks for, whichever body it came in.

    ``hf_schema``: answer in the Hugging Face task's shape (a flat ``[{label, score}]`` list for one image, a list
    of such lists for several), as JSON and raw-image requests expect; multipart forms get the envelope
    ``{"model", "predictions"}``. ``single``: the request held one image, not a list.
    """

    payloads: list[ImagePayload]
    model: str | None = None
    parameters: PredictParameters = field(default_factory=PredictParameters)
    hf_schema: bool = True
    single: bool = True


@dataclass(frozen=True)
class AnswerOptions:
    """A request's parameters checked against the model that answers, defaults filled in: what the pipeline's
    steps use."""

    top_k: int
    function_to_apply: str
    prior: torch.Tensor | None  # None: the balanced answer; ignored when estimated
    prior_stream: str | None = None  # the stream the request's images join (serve.streams), if any
    estimated: bool = False  # answered with prior_stream's estimate, this request's images included


Base64Image = Annotated[str, Field(min_length=1, json_schema_extra={"format": "byte"},
                                   description="an image file, base64-encoded (a data: URI prefix is allowed)")]


class PredictRequest(BaseModel):
    """The Hugging Face image-classification request: base64 image(s) plus parameters."""

    model_config = ConfigDict(extra="forbid")
    inputs: Base64Image | list[Base64Image] = Field(..., description="one base64-encoded image, or a list "
                                                                           "of them (1 to --max-images)")
    parameters: PredictParameters | None = None
    model: str | None = Field(None, description="which loaded model answers; the first one when omitted")


def describe_validation(exc: ValidationError) -> str:
    """Every fault pydantic found, each as ``where: what``."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def decode_base64(text: str, name: str) -> bytes:
    """Strict base64 (an optional ``data:image/...;base64,`` prefix is allowed); bad input answers 422."""
    text = _DATA_URI.sub("", text.strip(), count=1)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(422, f"{name} is not valid base64 ({exc}); send the image file's bytes base64-encoded") from exc
    if not data:
        raise RequestError(422, f"{name} is empty; send the image file's bytes base64-encoded")
    return data


def payloads_from_json(body: bytes) -> ParsedRequest:
    """Parse a Hugging Face task JSON body: base64 image(s), ``parameters``, and our optional model id."""
    try:
        raw: Any = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(422, f"request body is not valid JSON ({exc}); send "
                                '{"inputs": "<base64 image>", "parameters": {"top_k": 5}}') from exc
    try:
        request = PredictRequest.model_validate(raw)
    except ValidationError as exc:
        raise RequestError(422, f"invalid request: {describe_validation(exc)}; expected "
                                '{"inputs": "<base64>" | ["<base64>", ...], "parameters": {"top_k": 5}, "model": "..."}'
                           ) from exc
    texts = [request.inputs] if isinstance(request.inputs, str) else request.inputs
    names = ["inputs"] if isinstance(request.inputs, str) else [f"inputs[{i}]" for i in range(len(texts))]
    payloads = [ImagePayload(name, decode_base64(text, name)) for name, text in zip(names, texts)]
    return ParsedRequest(payloads, request.model, request.parameters or PredictParameters(), hf_schema=True,
                         single=isinstance(request.inputs, str))


def payloads_from_form(parts: Sequence[FormPart]) -> ParsedRequest:
    """Read multipart form parts: every file part is an image; text fields ``model``, ``top_k``,
    ``function_to_apply`` and ``target_prior``."""
    payloads: list[ImagePayload] = []
    fields: dict[str, str] = {}
    for part in parts:
        if part.filename is None:
            if part.name not in FORM_FIELDS:
                raise RequestError(422, f"unknown form field {part.name!r}; send images as file parts plus optional "
                                        f"fields {', '.join(FORM_FIELDS)}")
            fields[part.name] = part.text()
            continue
        name = f"file {part.filename or part.name!r}"
        if part.content_type and not part.content_type.startswith(ACCEPTED_PART_TYPES):
            raise RequestError(415, f"{name} was sent as {part.content_type!r}; send images as image/* "
                                    f"({', '.join(SUPPORTED_FORMATS)}) or application/octet-stream")
        payloads.append(ImagePayload(name, part.data))
    model = fields.pop("model", None)
    return ParsedRequest(payloads, model, read_parameters(fields, "form field", text=True), hf_schema=False,
                         single=False)


def check_counts(payloads: Sequence[ImagePayload], max_images: int) -> None:
    """A request carries between one and ``max_images`` non-empty images."""
    if not payloads:
        raise RequestError(422, "the request holds no image; send one or more image files (multipart) "
                                'or {"inputs": "<base64>"} (JSON)')
    if len(payloads) > max_images:
        raise RequestError(413, f"{len(payloads)} images in one request; the limit is {max_images} "
                                "(split the images over several requests)")
    for payload in payloads:
        if not payload.data:
            raise RequestError(422, f"{payload.name} is empty; send the image file's bytes")


def read_parameters(values: Mapping[str, Any], where: str, text: bool = False) -> PredictParameters:
    """``PredictParameters`` from ``values`` (JSON values, or ``text`` as forms and query strings carry them); a
    malformed one answers 422 naming the ``where`` it came from."""
    try:
        return PredictParameters.model_validate(values, context={"text": text})
    except ValidationError as exc:
        raise RequestError(422, f"invalid {where}: {describe_validation(exc)}") from None


def answer_options(parameters: PredictParameters, model: ServedModel, default_top_k: int) -> AnswerOptions:
    """``parameters`` checked against the model that answers (422 naming the fault), the defaults filled in."""
    runner = model.runner
    prior = model.default_prior if parameters.target_prior is None else parameters.target_prior
    estimated = isinstance(prior, str) and prior == ESTIMATED
    if not estimated and not isinstance(prior, torch.Tensor):
        try:
            prior = resolve_prior(prior, runner)
        except PriorError as exc:
            raise RequestError(422, f"target_prior: {exc}") from None
    stream = parameters.prior_stream or (DEFAULT_STREAM if estimated else None)
    if stream is not None and (model.streams is None or not model.streams.enabled):
        asked = "target_prior 'estimated'" if estimated else f"prior_stream {stream!r}"
        raise RequestError(422, f"{asked} needs the server's prior streams, which are off (--prior-window 0); "
                                "start the server with --prior-window N (e.g. 1024), or send another target_prior")
    return AnswerOptions(check_top_k(parameters.top_k, runner.num_classes, default_top_k),
                         parameters.function_to_apply or DEFAULT_OUTPUT_FUNCTION, None if estimated else prior,
                         stream, estimated)


def check_top_k(top_k: int | None, num_classes: int, default: int) -> int:
    """``top_k`` of at least 1; more than the class count gives every class, as Hugging Face's pipelines do."""
    if top_k is None:
        return min(default, num_classes)
    if top_k < 1:
        raise RequestError(422, f"top_k={top_k} is out of range; ask for 1 or more labels")
    return min(top_k, num_classes)



async def parse_predict_request(request: Any, max_images: int) -> ParsedRequest:
    """What a ``/predict`` request asks for: a multipart form, a JSON body, or one raw image as the body.
    ``top_k``, ``function_to_apply``, ``model`` and ``target_prior`` may also come as query parameters (what a raw
    body has), which the form's or JSON body's own values override."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    raw = not content_type or content_type.startswith(RAW_BODY_TYPES)
    query = query_parameters(dict(request.query_params))
    if content_type == "multipart/form-data":
        try:
            parts = parse_form(await request.body(), request.headers.get("content-type", ""), max_images,
                               len(FORM_FIELDS))
        except FormError as exc:
            hint = (f"send at most {max_images} images per request" if exc.status == 413
                    else "send well-formed multipart/form-data")
            raise RequestError(exc.status, f"cannot read the multipart body: {exc}; {hint}") from exc
        parsed = payloads_from_form(parts)
    elif content_type == "application/json" or content_type.endswith("+json"):
        parsed = payloads_from_json(await request.body())
    elif raw:  # huggingface_hub sends bytes untyped
        parsed = ParsedRequest([ImagePayload("the request body", await request.body())], hf_schema=True, single=True)
    else:
        raise RequestError(415, f"Content-Type {content_type or '(none)'!r} is not supported; send image files as "
                                "multipart/form-data, base64 images as application/json, or one image as the body "
                                "(image/jpeg, image/png, image/webp or application/octet-stream)")
    check_counts(parsed.payloads, max_images)
    return body_over_query(parsed, query)


def body_over_query(body: ParsedRequest, query: ParsedRequest) -> ParsedRequest:
    """``body``'s own parameters, and ``query``'s where the body leaves one out."""
    given = body.parameters.model_dump(exclude_none=True)
    return replace(body, model=body.model or query.model, parameters=query.parameters.model_copy(update=given))


def query_parameters(query: dict[str, str]) -> ParsedRequest:
    """The model and the request parameters from the query string, checked (a request without images); anything
    else is refused."""
    unknown = sorted(set(query) - set(FORM_FIELDS))
    if unknown:
        raise RequestError(422, f"unknown query parameter(s) {', '.join(unknown)}; /predict takes "
                                f"{', '.join(FORM_FIELDS)}")
    values = dict(query)
    model = values.pop("model", None)
    return ParsedRequest([], model, read_parameters(values, "query", text=True))
