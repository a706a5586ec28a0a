"""The deployment's class prior in the server, in process: the three encodings of ``target_prior`` (JSON value,
query string, form field), the server-wide default, its resolution against a model, and the one scoring step."""
from __future__ import annotations

import json
import math
import re
from types import SimpleNamespace

import pytest
import torch
from pydantic import ValidationError

from gcl_zoo.prior import PriorError, adjust_logits, check_prior
from serve.cli import main as serve_main
from serve.errors import RequestError
from serve.multipart import FormPart
from serve.parsing import (
    PredictParameters,
    answer_options,
    body_over_query,
    payloads_from_form,
    payloads_from_json,
    query_parameters,
)
from serve.priors import default_prior, output_scores, prior_from_json, prior_from_text, read_prior_setting
from serve.runner import implied_prior_of, train_prior_of
from serve.schemas import prior_schemas
from serve.served import ServedModel
from serve.settings import ServeSettings

IMPLIED = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
COUNTS = [400, 100, 40, 10]


def runner(train_prior=None, implied_prior=IMPLIED) -> SimpleNamespace:
    """What prior resolution and scoring read off a ModelRunner."""
    return SimpleNamespace(model_id="m", num_classes=4, train_prior=train_prior, implied_prior=implied_prior)


def check_target_prior(spec, default, model_runner):
    """The prior a request's ``target_prior`` resolves to for a model whose server default is ``default``."""
    model = ServedModel(model_runner, None, None, default)
    return answer_options(PredictParameters(target_prior=spec), model, default_top_k=5).prior


def refusal(call, *args) -> str:
    """The 422 message of a request the server refuses."""
    with pytest.raises(RequestError) as refused:
        call(*args)
    assert refused.value.status == 422
    return refused.value.message


# ----------------------------------------------------------------------------------------------------- encodings
@pytest.mark.parametrize("text, spec", [
    ("uniform", "uniform"), ("train", "train"), ("5,2.5,1,0", [5.0, 2.5, 1.0, 0.0]),
    ("[5, 2.5 ,1,0]", [5.0, 2.5, 1.0, 0.0]), ("7", [7.0]),
])
def test_text_form_reads_words_and_comma_separated_weights(text, spec):
    assert prior_from_text(text) == spec


@pytest.mark.parametrize("text", ["Uniform", "", "1,-2", "nan,1", "1e3,1", "1;2", "[1,2", "1,,2", " 1,2", "inf"])
def test_text_form_refuses_anything_else_naming_the_forms(text):
    with pytest.raises(PriorError, match="'uniform', 'train', 'estimated' or a list of class weights"):
        prior_from_text(text)


@pytest.mark.parametrize("text", ["uniform", "train", "5,2.5,1,0", "[0, 0, 0.5, 0]", "1,2,3", "0,0,0,0", "[1,2",
                                  "-1,1,1,1", "1e3,1,1,1", "1, 2, 3, 4"])
def test_documented_text_pattern_accepts_exactly_what_the_server_accepts(text):
    """The OpenAPI document's text schema (for 4 classes) against what the server reads and a 4-class model takes."""
    schema = prior_schemas([4], train=True)["TargetPriorText"]["anyOf"]
    documented = text in schema[0]["enum"] or all(re.search(part["pattern"], text) for part in schema[1]["allOf"])
    try:
        check_target_prior(prior_from_text(text), None, runner(train_prior=torch.full((4,), 0.25)))
        served = True
    except (PriorError, RequestError):
        served = False
    assert documented == served


def test_the_document_offers_train_only_where_every_served_model_knows_its_counts():
    for train, estimating, words in ((True, True, ["uniform", "train", "estimated"]), (False, True, ["uniform", "estimated"]),
                                     (True, False, ["uniform", "train"])):
        schemas = prior_schemas([4, 7], train, estimating)
        assert all(schemas[name]["anyOf"][0]["enum"] == words for name in ("TargetPrior", "TargetPriorText"))
        assert [(o["minItems"], o["maxItems"]) for o in schemas["TargetPrior"]["anyOf"][1:]] == [(4, 4), (7, 7)]
        assert [(o["minItems"], o["maxItems"]) for o in schemas["PriorWeights"]["anyOf"]] == [(4, 4), (7, 7)]


def test_json_form_takes_words_and_numbers_only():
    assert prior_from_json("train") == "train"
    assert prior_from_json([3, 1.5, 0]) == [3.0, 1.5, 0.0]
    assert math.isnan(prior_from_json(json.loads("[NaN, 1]"))[0])  # Python's JSON reads NaN: refused when resolved
    assert prior_from_json([10 ** 400]) == [math.inf]
    for value, phrase in [("balanced", '"balanced"'), (5, "not 'uniform', 'train', 'estimated'"), ({"a": 1}, "not 'uniform'"),
                          (None, "null is not"),
                          ([1, True], r"target_prior\[1\] is true"), ([1, "2"], r"target_prior\[1\] is \"2\"")]:
        with pytest.raises(PriorError, match=phrase):
            prior_from_json(value)


def test_every_body_and_the_query_carry_target_prior_and_the_body_wins():
    body = json.dumps({"inputs": "aGk=", "parameters": {"target_prior": [1, 2, 3, 4]}}).encode()
    assert payloads_from_json(body).parameters.target_prior == [1.0, 2.0, 3.0, 4.0]
    image, field = FormPart("files", "a.png", "image/png", b"x"), FormPart("target_prior", None, "", b"uniform")
    form = payloads_from_form([image, field])
    assert form.parameters.target_prior == "uniform"
    query = query_parameters({"target_prior": "[4,3,2,1]", "top_k": "2"})
    assert query.parameters.target_prior == [4.0, 3.0, 2.0, 1.0] and query.parameters.top_k == 2
    assert body_over_query(form, query).parameters.target_prior == "uniform"
    assert body_over_query(payloads_from_json(b'{"inputs": "aGk="}'), query).parameters.target_prior == [4.0, 3.0, 2.0, 1.0]
    assert "target_prior" in refusal(query_parameters, {"target_prior": "lots"})
    assert "target_prior" in refusal(payloads_from_form, [FormPart("target_prior", None, "", b"1,-1")])
    null_weight = b'{"inputs": "aGk=", "parameters": {"target_prior": [null]}}'
    assert "target_prior[0] is null" in refusal(payloads_from_json, null_weight)


# ------------------------------------------------------------------------------------------ against the model
def test_a_request_prior_resolves_against_the_model_or_answers_422():
    default = check_prior(COUNTS, 4)
    assert check_target_prior(None, default, runner()) is default  # nothing asked: the server's default
    assert torch.equal(check_target_prior("uniform", default, runner()), torch.full((4,), 0.25, dtype=torch.float64))
    assert torch.equal(check_target_prior([2, 2, 0, 4], None, runner()), torch.tensor([0.25, 0.25, 0.0, 0.5],
                                                                                     dtype=torch.float64))
    assert check_target_prior("train", None, runner(train_prior=default)) is default
    for spec, phrase in [([1, 2, 3], "3 weights but the model has 4 classes"), ([1, -1, 1, 1], "negative"),
                         ([0, 0, 0, 0], "all zero"), ([1, math.nan, 1, 1], "NaN"), ([math.inf, 1, 1, 1], "infinite"),
                         ("train", "does not know its training class counts")]:
        assert phrase in refusal(check_target_prior, spec, None, runner())


def test_scores_move_to_the_prior_before_the_output_function():
    rows = torch.randn(3, 4, generator=torch.Generator().manual_seed(0)) * 5
    prior = check_prior([1, 1, 1, 5], 4)
    adjusted = adjust_logits(rows, prior, IMPLIED)
    assert not torch.allclose(adjusted, rows)
    assert torch.equal(output_scores(rows, runner(), prior, "none"), adjusted)
    assert torch.equal(output_scores(rows, runner(), prior), adjusted.softmax(dim=1))
    assert torch.equal(output_scores(rows, runner(), prior, "sigmoid"), adjusted.sigmoid())
    assert torch.equal(output_scores(rows, runner(), None), rows.softmax(dim=1))  # no prior: as calibrated
    # the uniform prior is relative to the source prior like any other, so a hair off it answers the same labels
    uniform, hair = check_prior([2, 2, 2, 2], 4), check_prior([2 + 2e-6, 2, 2, 2], 4)
    assert torch.equal(output_scores(rows, runner(), uniform).argmax(1), output_scores(rows, runner(), hair).argmax(1))
    assert torch.allclose(output_scores(rows, runner(), uniform), output_scores(rows, runner(), hair), atol=1e-5)
    assert torch.allclose(output_scores(rows, runner(), uniform), adjust_logits(rows, uniform, IMPLIED).softmax(1))
    balanced = runner(implied_prior=check_prior([1, 1, 1, 1], 4))  # a balanced calibration: uniform moves nothing
    assert torch.allclose(output_scores(rows, balanced, uniform), rows.softmax(dim=1), atol=1e-6)


def test_the_model_carries_its_implied_prior_and_training_counts():
    gcl = SimpleNamespace(num_classes=4, implied_prior=IMPLIED.float(), train_class_counts=torch.tensor(COUNTS))
    assert torch.allclose(implied_prior_of(gcl), IMPLIED)
    assert torch.allclose(train_prior_of(gcl), check_prior(COUNTS, 4))
    plain = SimpleNamespace(num_classes=4, pretrained_cfg={})
    assert implied_prior_of(plain) is None and train_prior_of(plain) is None
    unknown = SimpleNamespace(num_classes=4, train_class_counts=torch.zeros(4, dtype=torch.long))
    assert train_prior_of(unknown) is None
    with pytest.raises(ValueError, match="train_class_counts cannot be used: the class prior has 3 weights"):
        train_prior_of(SimpleNamespace(num_classes=4, train_class_counts=torch.tensor([1, 2, 3])))


# -------------------------------------------------------------------------------------------- server-wide default
def test_server_wide_default_from_a_word_a_list_file_or_a_mapping_file(tmp_path):
    models = ["a", "b"]
    assert read_prior_setting("train", models) == {"a": "train", "b": "train"}
    listed = tmp_path / "list.json"
    listed.write_text("[3, 1]")
    assert read_prior_setting(str(listed), models) == {"a": [3.0, 1.0], "b": [3.0, 1.0]}
    mapped = tmp_path / "map.json"
    mapped.write_text('{"b": [1, 2, 3]}')
    settings = ServeSettings(models=models, target_prior=str(mapped))
    assert (settings.target_prior_for("a"), settings.target_prior_for("b")) == ("uniform", [1.0, 2.0, 3.0])
    from_env = ServeSettings.from_sources({}, environ={"GCL_ZOO_SERVE_TARGET_PRIOR": "train"})
    assert from_env.target_prior_for(from_env.models[0]) == "train"
    for content, phrase in [('{"c": "train"}', "names c, which the server does not serve"), ('"train"', "holds a str"),
                            ('{"a": "balanced"}', '"balanced"'), ('{"a": null}', "null is not"),
                            ("[1,", "readable JSON file")]:
        mapped.write_text(content)
        with pytest.raises(ValidationError, match=phrase):
            ServeSettings(models=models, target_prior=str(mapped))


def test_a_bad_server_wide_default_stops_the_server(tmp_path, capsys):
    """A file the settings cannot read stops the command before anything loads (exit 2); a list of the wrong length
    stops the model's loading (the server exits 1 with this message)."""
    assert serve_main(["--target-prior", str(tmp_path / "missing.json")]) == 2
    assert "target_prior" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--target-prior for m: the class prior has 3 weights but the model has 4"):
        default_prior([1, 2, 3], runner())
