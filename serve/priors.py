"""The deployment's class prior in the server: how a request or the operator names it, and the one step that moves
a model's scores to it before the answer's output function.

A prior is named as ``"uniform"`` (the balanced deployment; like every prior, taken relative to the model's source
prior, which a balanced calibration makes uniform, so the scores stay as they are),
``"train"`` (the model's training class counts, normalised), ``"estimated"`` (the prior of the request's stream's
recent traffic, this request's images included: ``serve.streams``) or a list of non-negative class weights in the
model's label order. JSON carries the list as a list; a query string or form field carries it as text: the weights separated
by commas, optionally in square brackets (a JSON list's text). ``text_prior_pattern`` is that text's grammar, which
the OpenAPI document states too, so the document and the server accept the same strings.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from gcl_zoo.prior import PriorError, adjust_logits, check_prior

__all__ = ["PriorSpec", "PRIOR_WORDS", "ESTIMATED", "DefaultPrior", "text_prior_pattern", "prior_from_json", "prior_from_text",
           "read_prior_setting", "resolve_prior", "default_prior", "OUTPUT_TRANSFORMS", "DEFAULT_OUTPUT_FUNCTION",
           "output_scores"]

PriorSpec = str | list[float]  # "uniform", "train", "estimated" or class weights, before it meets a model
ESTIMATED = "estimated"  # the prior estimated from the stream's traffic: known only when the request's images are
PRIOR_WORDS = ("uniform", "train", ESTIMATED)
DefaultPrior = torch.Tensor | str  # a model's default: a probability vector, or ESTIMATED
# a weight in text: plain decimals only (no sign, exponent, NaN or inf), short enough that any sum stays finite
TEXT_NUMBER = r"[0-9]{1,15}(?:\.[0-9]{1,15})?"
_WEIGHTS = "one non-negative number per class, in the model's label order"


def text_prior_pattern(counts: Sequence[int]) -> str:
    """The regular expression of a text-form list of exactly one of ``counts`` weights (any number when empty)."""
    repeats = [f"{{{count - 1}}}" for count in counts] or ["*"]
    items = "|".join(f"{TEXT_NUMBER}(?: *, *{TEXT_NUMBER}){repeat}" for repeat in repeats)
    return rf"^(?:\[ *(?:{items}) *\]|(?:{items}))$"


_TEXT_LIST = re.compile(text_prior_pattern([]))


def _weight(value: Any, index: int) -> float:
    """One JSON weight as a float: numbers only (a JSON ``true`` or ``"1"`` is a mistake, not a weight)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PriorError(f"target_prior[{index}] is {json.dumps(value)[:40]}, not a number; send {_WEIGHTS}")
    try:
        return float(value)
    except OverflowError:  # an integer beyond float range
        return float("inf")


def prior_from_json(value: Any) -> PriorSpec:
    """A ``target_prior`` as JSON carries it; its length and values are checked against the model later
    (``resolve_prior``), NaN and infinities included."""
    if value in PRIOR_WORDS:
        return value
    if isinstance(value, list):
        return [_weight(v, i) for i, v in enumerate(value)]
    raise PriorError(f"target_prior {json.dumps(value)[:80]} is not 'uniform', 'train', 'estimated' or a list of class "
                     f"weights; send one of the words, or a JSON list of {_WEIGHTS}")


def prior_from_text(text: str) -> PriorSpec:
    """A ``target_prior`` as a query string or form field carries it: a word, or comma-separated weights."""
    if text in PRIOR_WORDS:
        return text
    if _TEXT_LIST.fullmatch(text) is None:
        raise PriorError(f"target_prior={text[:80]!r} is not 'uniform', 'train', 'estimated' or a list of class weights; send "
                         f"one of the words, or {_WEIGHTS} as plain decimals separated by commas (5,2.5,1), "
                         "optionally in square brackets")
    return [float(number) for number in re.findall(TEXT_NUMBER, text)]


def read_prior_setting(value: str, models: Sequence[str]) -> dict[str, PriorSpec]:
    """Each served model's default prior from ``--target-prior``: a word for every model, or a JSON file holding
    a list (every model) or a mapping from model id to a list or word (models it leaves out: uniform)."""
    if value in PRIOR_WORDS:
        return {model: value for model in models}
    try:
        content = json.loads(Path(value).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        message = f"target_prior {value!r} is neither 'uniform', 'train', 'estimated' nor a readable JSON file ({exc})"
        raise ValueError(message) from None
    try:
        if isinstance(content, dict):
            unknown = sorted(set(content) - set(models))
            if unknown:
                raise PriorError(f"it names {', '.join(unknown)}, which the server does not serve; the keys must be "
                                 f"model ids given to --model ({', '.join(models)})")
            return {model: prior_from_json(content.get(model, "uniform")) for model in models}
        if isinstance(content, list):
            return {model: prior_from_json(content) for model in models}
        raise PriorError(f"it holds a {type(content).__name__}; write a list of class weights or a mapping from "
                         "model id to a list, 'uniform', 'train' or 'estimated'")
    except PriorError as exc:
        raise ValueError(f"target_prior file {value}: {exc}") from None


def resolve_prior(spec: PriorSpec, runner: Any) -> torch.Tensor | None:
    """The probability vector ``spec`` names for ``runner``'s model (its ``num_classes``, ``train_prior``); a
    ``PriorError`` naming the fault otherwise. The uniform prior is no special case, so that it and a prior a hair
    off it give the same answers whatever the model's source prior. ``"estimated"`` names no fixed vector: it is
    resolved per request, from the request's stream (``serve.streams``)."""
    if spec == ESTIMATED:
        raise PriorError("'estimated' is the prior of a stream's traffic, resolved per request by the server; "
                         "give 'uniform', 'train' or a list of class weights here")
    if spec == "uniform":
        return torch.full((runner.num_classes,), 1.0 / runner.num_classes, dtype=torch.float64)
    if spec == "train":
        if runner.train_prior is None:
            raise PriorError(f"the model {runner.model_id} does not know its training class counts (its weights "
                             "carry no train_class_counts); send target_prior as a list of "
                             f"{runner.num_classes} class weights, or 'uniform'")
        return runner.train_prior
    return check_prior(spec, runner.num_classes)


def default_prior(spec: PriorSpec, runner: Any) -> DefaultPrior:
    """The server-wide default for ``runner``'s model, resolved when it loads, so a bad one stops the server;
    ``ESTIMATED`` stays a word (each request's stream resolves it)."""
    if spec == ESTIMATED:
        return ESTIMATED
    try:
        return resolve_prior(spec, runner)
    except PriorError as exc:
        raise ValueError(f"--target-prior for {runner.model_id}: {exc}") from None


OUTPUT_TRANSFORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "softmax": lambda logits: logits.softmax(dim=1), "sigmoid": torch.sigmoid, "none": lambda logits: logits}
DEFAULT_OUTPUT_FUNCTION = "softmax"  # what a request that names no function_to_apply gets: probabilities


def output_scores(rows: torch.Tensor, runner: Any, prior: torch.Tensor | None,
                  function: str = DEFAULT_OUTPUT_FUNCTION) -> torch.Tensor:
    """The scores an answer carries for calibrated-logit ``rows``: moved to the deployment's ``prior`` against
    the model's implied one (``runner.implied_prior``), then through the output ``function``. Every route's
    answer comes through here."""
    return OUTPUT_TRANSFORMS[function](adjust_logits(rows, prior, runner.implied_prior))
