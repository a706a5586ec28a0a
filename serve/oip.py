"""The Open Inference Protocol ("v2", REST) as KServe and Triton define it, so their clients talk to the server.

Routes: ``/v2/health/live``, ``/v2/health/ready``, ``/v2``, ``/v2/models/{name}``, ``/v2/models/{name}/ready``,
``/v2/models/{name}/infer``. A model takes one of two inputs:
  * ``image``: ``BYTES``, shape ``[N]``, encoded image files (decoded and pre-processed like ``/predict``'s);
  * ``input``: ``FP32``, shape ``[N, 3, H, W]``, already pre-processed (the model's input size, mean and std);
and answers ``probabilities`` (``FP32 [N, C]``, the softmax of the scaled logits, moved to the request parameter
``target_prior`` as ``/predict``'s scores are) and ``labels`` (``BYTES [N, k]``, the top ``k`` class names, best
first; ``k`` is the request parameter ``top_k``). Request and response tensors may use the binary tensor extension
(``Inference-Header-Content-Length``), as ``tritonclient`` does by default; in plain JSON an ``image`` element is
the file base64-encoded.
Errors are the protocol's ``{"error": "..."}`` with the same status codes as ``/predict``.
"""
import json
import re
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from fastapi import APIRouter, Request, Security
from fastapi.responses import JSONResponse, Response

from . import __version__
from .decoding import ImagePayload
from .dependencies import State, require_api_key
from .errors import RequestError
from .parsing import PredictParameters, answer_options, check_counts, decode_base64, read_parameters
from .pipeline import InferenceJob, answer
from .schemas import NOT_READY, UNKNOWN_MODEL, V2_ERRORS, V2_INFER_BODY
from .served import ServedModel, ServedModels

__all__ = ["InferRequest", "InferReply", "InferSpec", "parse_infer_request", "infer_response", "model_metadata",
           "protocol_name", "model_named", "router", "INPUT_IMAGE", "INPUT_TENSOR", "OUTPUTS"]

INPUT_IMAGE, INPUT_TENSOR = "image", "input"
OUTPUTS = ("probabilities", "labels")
HEADER_LENGTH = "inference-header-content-length"


def protocol_name(model_id: str) -> str:
    """A model's name in ``/v2/models/{name}``: its id when URL-safe, else the id's last path component."""
    if re.fullmatch(r"[A-Za-z0-9_.-]+", model_id):
        return model_id
    return re.split(r"[/:]", model_id.rstrip("/"))[-1]


def model_metadata(name: str, input_size: tuple[int, ...], num_classes: int) -> dict[str, Any]:
    return {
        "name": name, "versions": ["1"], "platform": "pytorch",
        "inputs": [{"name": INPUT_IMAGE, "datatype": "BYTES", "shape": [-1]},
                   {"name": INPUT_TENSOR, "datatype": "FP32", "shape": [-1, *input_size]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, num_classes]},
                    {"name": "labels", "datatype": "BYTES", "shape": [-1, -1]}],
    }


# the request parameters v2 takes: /predict's, but function_to_apply (its "probabilities" are probabilities)
V2_PARAMETERS = tuple(name for name in PredictParameters.model_fields if name != "function_to_apply")


@dataclass(frozen=True)
class InferReply:
    """What a v2 answer echoes and holds: the request's id, and the outputs asked for as (name, binary) in order."""

    request_id: str | None
    outputs: list[tuple[str, bool]]


@dataclass(frozen=True)
class InferRequest:
    """One read inference request: encoded images or a pre-processed tensor, its parameters, its reply's shape."""

    images: list[ImagePayload] | None
    tensor: torch.Tensor | None
    parameters: PredictParameters
    reply: InferReply


def _split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """The JSON header and the binary tail of a request (the whole body is JSON without the extension)."""
    if header_length is None:
        head, tail = body, b""
    else:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise RequestError(400, f"Inference-Header-Content-Length {header_length!r} does not fit a body of "
                                    f"{len(body)} bytes; send the JSON header's length in bytes")
        head, tail = body[:int(header_length)], body[int(header_length):]
    try:
        request = json.loads(head)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"the inference request is not valid JSON ({exc}); send "
                                '{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [...]}]}') from exc
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list) or not request["inputs"]:
        raise RequestError(400, "the inference request needs an 'inputs' list with one tensor "
                                f"({INPUT_IMAGE!r} BYTES or {INPUT_TENSOR!r} FP32)")
    return request, tail


def _mapping(value: Any, what: str) -> dict[str, Any]:
    """``value`` as a JSON object (absent: empty); anything else is the client's malformed request (400)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RequestError(400, f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _bytes_elements(tensor: dict[str, Any], binary: bytes | None) -> list[bytes]:
    """The elements of a BYTES tensor: 4-byte little-endian lengths + data in binary form, base64 strings in JSON."""
    if binary is None:  # JSON cannot carry raw file bytes: each element is the file, base64-encoded
        data = tensor.get("data")
        if not isinstance(data, list) or not all(isinstance(d, str) for d in data):
            raise RequestError(400, f"input {INPUT_IMAGE!r} needs 'data' as a list of base64 strings (or binary data)")
        return [decode_base64(d, f"image[{i}]") for i, d in enumerate(data)]
    out, offset = [], 0
    while offset < len(binary):
        if offset + 4 > len(binary):
            raise RequestError(400, f"input {INPUT_IMAGE!r}: truncated binary BYTES element")
        (length,) = struct.unpack_from("<I", binary, offset)
        out.append(binary[offset + 4:offset + 4 + length])
        offset += 4 + length
    if offset != len(binary):
        raise RequestError(400, f"input {INPUT_IMAGE!r}: binary BYTES elements overrun their size")
    return out


def _fp32_tensor(tensor: dict[str, Any], binary: bytes | None, input_size: tuple[int, ...]) -> torch.Tensor:
    shape = tensor.get("shape")
    if not isinstance(shape, list) or len(shape) != 4 or tuple(shape[1:]) != tuple(input_size) \
            or isinstance(shape[0], bool) or not isinstance(shape[0], int):
        raise RequestError(400, f"input {INPUT_TENSOR!r} has shape {shape}; this model takes [N, "
                                f"{', '.join(map(str, input_size))}] (pre-processed with its mean and std)")
    if binary is not None:
        if len(binary) % 4:
            raise RequestError(400, f"input {INPUT_TENSOR!r}: {len(binary)} binary bytes are not whole FP32 values")
        values = np.frombuffer(binary, dtype="<f4")
    else:
        try:
            values = np.asarray(tensor.get("data"), dtype=np.float32).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise RequestError(400, f"input {INPUT_TENSOR!r} needs 'data' as a flat list of numbers ({exc})") from None
    if values.size != int(np.prod(shape)):
        raise RequestError(400, f"input {INPUT_TENSOR!r} holds {values.size} values; shape {shape} needs "
                                f"{int(np.prod(shape))}")
    return torch.from_numpy(values.astype(np.float32).reshape(shape).copy())


def parse_infer_request(body: bytes, header_length: str | None, input_size: tuple[int, ...],
                        max_images: int) -> InferRequest:
    """Check and decode a v2 inference request for a model with ``input_size`` (C, H, W)."""
    request, tail = _split_body(body, header_length)
    if len(request["inputs"]) != 1:
        raise RequestError(400, f"send exactly one input tensor, {INPUT_IMAGE!r} or {INPUT_TENSOR!r}; got "
                                f"{len(request['inputs'])}")
    tensor = _mapping(request["inputs"][0], "inputs[0]")
    name, datatype = tensor.get("name"), tensor.get("datatype")
    size = _mapping(tensor.get("parameters"), "inputs[0].parameters").get("binary_data_size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise RequestError(400, f"binary_data_size must be a byte count (an integer >= 0), got {size!r}")
    binary = tail[:size] if size is not None else None
    if size is not None and len(binary) != size:
        raise RequestError(400, f"input {name!r} declares {size} binary bytes but the body holds {len(tail)}")
    images, batch = None, None
    if name == INPUT_IMAGE and datatype == "BYTES":
        images = [ImagePayload(f"image[{i}]", data) for i, data in enumerate(_bytes_elements(tensor, binary))]
        check_counts(images, max_images)
    elif name == INPUT_TENSOR and datatype == "FP32":
        batch = _fp32_tensor(tensor, binary, input_size)
        if not 1 <= batch.shape[0] <= max_images:
            raise RequestError(413 if batch.shape[0] else 400, f"input {INPUT_TENSOR!r} holds {batch.shape[0]} "
                                                               f"images; send 1 to {max_images}")
    else:
        raise RequestError(400, f"unknown input {name!r} ({datatype}); send {INPUT_IMAGE!r} (BYTES, encoded images)"
                                f" or {INPUT_TENSOR!r} (FP32, pre-processed NCHW)")
    asked = request.get("outputs") or [{"name": n} for n in OUTPUTS]
    if not isinstance(asked, list):
        raise RequestError(400, f"'outputs' must be a list of {{\"name\": ...}} objects, got {type(asked).__name__}")
    outputs = []
    for i, output in enumerate(asked):
        output = _mapping(output, f"outputs[{i}]")
        if output.get("name") not in OUTPUTS:
            raise RequestError(400, f"unknown output {output.get('name')!r}; this model answers {', '.join(OUTPUTS)}")
        binary_out = _mapping(output.get("parameters"), f"outputs[{i}].parameters").get("binary_data", False)
        outputs.append((output["name"], bool(binary_out)))
    given = _mapping(request.get("parameters"), "parameters")  # others (a client's own) are not ours to refuse
    parameters = read_parameters({k: v for k, v in given.items() if k in V2_PARAMETERS}, "parameters")
    return InferRequest(images, batch, parameters, InferReply(request.get("id"), outputs))


def infer_response(name: str, reply: InferReply, probs: torch.Tensor, labels: list[str],
                   top_k: int) -> tuple[bytes, dict[str, str]]:
    """The v2 response body and headers for probabilities ``probs`` (``output_scores``) and the ``top_k`` labels
    (binary outputs where the client asked for them)."""
    outputs, blobs = [], []
    for output, binary in reply.outputs:
        if output == "probabilities":
            values = probs.numpy().astype("<f4")
            entry = {"name": output, "datatype": "FP32", "shape": list(values.shape)}
            payload = values.tobytes()
            json_data: Any = values.reshape(-1).tolist()
        else:
            top = probs.topk(top_k, dim=1).indices.tolist()
            names = [labels[i] for row in top for i in row]
            entry = {"name": output, "datatype": "BYTES", "shape": [len(top), top_k]}
            payload = b"".join(struct.pack("<I", len(n.encode())) + n.encode() for n in names)
            json_data = names
        if binary:
            entry["parameters"] = {"binary_data_size": len(payload)}
            blobs.append(payload)
        else:
            entry["data"] = json_data
        outputs.append(entry)
    head = {"model_name": name, "model_version": "1", "outputs": outputs}
    if reply.request_id is not None:
        head["id"] = reply.request_id
    header = json.dumps(head, separators=(",", ":")).encode()
    if not blobs:
        return header, {"content-type": "application/json"}
    return header + b"".join(blobs), {"content-type": "application/octet-stream",
                                      "Inference-Header-Content-Length": str(len(header))}


def model_named(models: ServedModels, name: str) -> ServedModel:
    """The served model whose ``protocol_name`` is ``name``; 404 names the served ones."""
    for model_id, model in models.served.items():
        if protocol_name(model_id) == name:
            return model
    raise RequestError(404, f"unknown model {name!r}; this server has "
                            f"{', '.join(protocol_name(m) for m in models.served)} (see GET /v2/models/NAME)")


class InferSpec:
    """The v2 infer route's request in (``InferRequest``: encoded images or a pre-processed tensor, its parameters
    checked against the model the path names), its outputs out."""

    async def decode_request(self, request: Request, models: ServedModels) -> InferenceJob[InferReply]:
        model = model_named(models, request.path_params["name"])
        parsed = parse_infer_request(await request.body(), request.headers.get(HEADER_LENGTH),
                                     tuple(model.runner.config["input_size"]), models.max_images)
        return InferenceJob(model.runner, answer_options(parsed.parameters, model, models.default_top_k),
                            parsed.reply, images=parsed.images, tensor=parsed.tensor)

    def encode_response(self, job: InferenceJob[InferReply], scores: torch.Tensor) -> Response:
        body, headers = infer_response(protocol_name(job.runner.model_id), job.reply, scores, job.runner.labels,
                                       job.options.top_k)
        return Response(body, headers=headers)


INFER = InferSpec()
router = APIRouter(tags=["open inference protocol"])


@router.get("/v2/health/live", summary="v2: the process answers")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/v2/health/ready", summary="v2: every model serves", responses=NOT_READY)
async def ready(state: State) -> JSONResponse:
    serving = state.serving()  # False while loading or draining, or after a device failed for good
    return JSONResponse({"ready": serving}, status_code=200 if serving else 503)


@router.get("/v2", summary="v2: server metadata")
async def server_metadata() -> dict[str, Any]:
    return {"name": "gcl-zoo", "version": __version__, "extensions": ["binary_tensor_data"]}


@router.get("/v2/models/{name}", summary="v2: model metadata", responses=UNKNOWN_MODEL)
async def metadata(name: str, state: State) -> dict[str, Any]:
    state.check_ready()
    runner = model_named(state.models, name).runner
    return model_metadata(name, tuple(runner.config["input_size"]), runner.num_classes)


@router.get("/v2/models/{name}/ready", summary="v2: the model serves", responses=UNKNOWN_MODEL)
async def model_ready(name: str, state: State) -> dict[str, Any]:
    state.check_ready()
    model_named(state.models, name)
    return {"name": name, "ready": True}


@router.post("/v2/models/{name}/infer", summary="v2: classify images or pre-processed tensors", responses=V2_ERRORS,
             openapi_extra=V2_INFER_BODY)
async def infer(name: str, request: Request, state: State, _auth: None = Security(require_api_key)) -> Response:
    return await answer(INFER, request, state)
