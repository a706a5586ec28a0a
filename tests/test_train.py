"""Training: recipes, schedules, both stages end to end on a tiny long-tailed CIFAR-10 subset, errors."""
import json

import pytest
import torch
from safetensors.torch import load_file

from train import cli
from train.recipes import RecipeError, available_recipes, load_recipe
from train.schedule import lr_at

TINY = ["--max-per-class", "60", "--imb-ratio", "10", "--test-per-class", "20", "--val-per-class", "10", "--workers",
        "0", "--no-progress", "--batch-size", "64", "--stage2.batch-size", "64", "--model", "cifar_resnet20",
        "--eval-every", "100"]


def tiny_run(tmp_path, data_root, *extra, name="run"):
    out = tmp_path / name
    argv = ["--recipe", "cifar10_lt", "--out", str(out), "--data-root", str(data_root), *TINY, *extra]
    assert cli.main(argv) == 0
    return out


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_every_recipe_loads_and_matches_the_authors_settings():
    assert {"cifar10_lt", "cifar100_lt", "imagenet_lt", "inat18", "places_lt", "imagefolder"} <= set(available_recipes())
    c10 = load_recipe("cifar10_lt")
    assert (c10["opt"], c10["epochs"], c10["batch_size"], c10["lr"], c10["weight_decay"], c10["decay_epochs"]) == ("momentum", 200, 64, 0.1, 2e-4, [160, 180])
    assert (c10["s"], c10["m"], c10["noise_mul"], c10["mixup_alpha"]) == (30.0, 0.0, 0.5, 1.0)
    s2 = c10["stage2"]
    assert (s2["epochs"], s2["s"], s2["m"], s2["gamma"], s2["sampler"], s2["method"]) == (30, 20.0, 0.1, 1.0, "cben", "crt")
    places = load_recipe("places_lt")
    assert (places["model"], places["pretrained_backbone"], places["batch_size"], places["lr"]) == ("resnet152", True, 512, 0.2)
    assert places["stage2"]["s"] == 15.0 and places["noise_mul"] == 1.0


def test_overrides_apply_and_bad_fields_are_named():
    recipe = load_recipe("cifar10_lt", {"lr": "0.05", "stage2.sampler": "class_balanced", "decay_epochs": ["100"],
                                        "mixup_alpha": "0"})
    assert recipe["lr"] == 0.05 and recipe["stage2"]["sampler"] == "class_balanced" and recipe["decay_epochs"] == [100]
    with pytest.raises(RecipeError, match="'learning_rate'"):
        load_recipe("cifar10_lt", {"learning_rate": 1})
    with pytest.raises(RecipeError, match="'lr' must be float"):
        load_recipe("cifar10_lt", {"lr": "fast"})
    with pytest.raises(RecipeError, match="stage2.sampler.*choose one of"):
        load_recipe("cifar10_lt", {"stage2.sampler": "balanced"})
    with pytest.raises(RecipeError, match="unknown recipe 'cifar11'"):
        load_recipe("cifar11")


def test_schedules_follow_the_recipe():
    c10 = load_recipe("cifar10_lt")
    assert [round(lr_at(c10, e), 6) for e in range(6)] == [0.02, 0.04, 0.06, 0.08, 0.1, 0.1]
    assert lr_at(c10, 159) == pytest.approx(0.1) and lr_at(c10, 160) == pytest.approx(0.01)
    assert lr_at(c10, 179) == pytest.approx(0.01) and lr_at(c10, 180) == pytest.approx(0.001)
    s2 = c10["stage2"]
    assert lr_at(s2, 0) == pytest.approx(0.002) and lr_at(s2, 15) == pytest.approx(0.001)


def test_two_stages_end_to_end(tmp_path, cifar10_zip):
    out = tiny_run(tmp_path, cifar10_zip, "--epochs", "6", "--warmup-epochs", "1", "--lr", "0.05",
                   "--mixup-alpha", "0", "--stage2.epochs", "2")
    rows = metrics(out)
    stage1 = [r["loss"] for r in rows if r["stage"] == 1]
    assert len(stage1) == 6 and stage1[-1] < stage1[0]
    first = load_file(str(out / "stage1" / "model.safetensors"))
    final = load_file(str(out / "model.safetensors"))
    backbone = [k for k in first if k.startswith("backbone.")]
    assert any("running_mean" in k for k in backbone)
    for key in backbone:  # weights and BatchNorm statistics untouched by stage 2
        assert torch.equal(first[key], final[key]), key
    assert not torch.equal(first["head.weight"], final["head.weight"])
    assert float(first["logit_scale"]) == 30.0  # stage 1's s; stage 2 trains at s=20, then calibration fits it
    calibration = json.loads((out / "config.json").read_text())["calibration"]
    assert calibration["logit_scale_before"] == 20.0
    assert float(final["logit_scale"]) == pytest.approx(calibration["logit_scale"])
    assert calibration["fitted_on"].startswith("validation split") and calibration["images"] > 0
    assert calibration["after"]["nll"] <= calibration["before"]["nll"]  # the fitted scale is the NLL minimum
    assert final["implied_prior"].sum().item() == pytest.approx(1.0)
    counts = final["train_class_counts"].tolist()  # the long-tailed subset's sizes travel with the weights
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1] > 0
    report = json.loads((out / "eval.json").read_text())
    assert report["num_samples"] == 200 and 0 <= report["top1"] <= 100 and len(report["confusion"]) == 10
    for key in ("many", "medium", "few", "top5", "per_class"):
        assert key in report
    config = json.loads((out / "config.json").read_text())
    assert config["label_names"][0] == "airplane" and config["pretrained_cfg"]["input_size"] == [3, 32, 32]
    assert config["model_args"]["backbone"] == "cifar_resnet20"


def test_stage2_refuses_a_missing_or_mismatched_stage1(tmp_path, cifar10_zip, capsys):
    out = tmp_path / "only2"
    code = cli.main(["--recipe", "cifar10_lt", "--out", str(out), "--data-root", str(cifar10_zip), *TINY, "--stage", "2"])
    assert code == 2 and "stage 2 needs the stage-1 model" in capsys.readouterr().err
    stage1 = tiny_run(tmp_path, cifar10_zip, "--epochs", "1", "--stage", "1", name="s1")
    code = cli.main(["--recipe", "cifar10_lt", "--out", str(tmp_path / "mismatch"), "--data-root", str(cifar10_zip),
                     *TINY, "--model", "cifar_resnet32", "--stage", "2", "--stage1-checkpoint", str(stage1 / "stage1")])
    assert code == 2 and "is a 'cifar_resnet20'" in capsys.readouterr().err


def test_tuning_runs_are_judged_on_validation_and_never_read_the_test_set(tmp_path, cifar10_zip, capsys):
    """``--no-test``: what stage-2 studies run to choose settings; the test set is read only by the chosen run."""
    stage1 = tiny_run(tmp_path, cifar10_zip, "--epochs", "1", "--stage", "1", "--no-test", name="s1")
    assert all("top1" not in r and "val_top1" in r for r in metrics(stage1))
    out = tiny_run(tmp_path, cifar10_zip, "--stage", "2", "--stage1-checkpoint", str(stage1 / "stage1"),
                   "--stage2.epochs", "2", "--no-test", name="tune")
    rows = metrics(out)
    assert [r["stage"] for r in rows] == [2, 2] and not any(key in r for r in rows for key in ("top1", "few"))
    report = json.loads((out / "eval.json").read_text())
    assert report["split"] == "val" and report["num_samples"] == 100 and len(report["confusion"]) == 10
    assert "final (last epoch) validation accuracy" in capsys.readouterr().out
    assert json.loads((out / "run.json").read_text())["options"]["no_test"] is True
    code = cli.main(["--recipe", "cifar10_lt", "--out", str(tmp_path / "noval"), "--data-root", str(cifar10_zip),
                     *TINY, "--val-per-class", "0", "--epochs", "1", "--no-test"])
    assert code == 2 and "has none" in capsys.readouterr().err and not (tmp_path / "noval").exists()


@pytest.mark.parametrize("method, extra", [("lws", ("--channels-last", "on", "--amp", "on", "--fast", "on")),
                                           ("tau_norm", ())])
def test_other_retraining_methods(tmp_path, cifar10_zip, method, extra):
    out = tiny_run(tmp_path, cifar10_zip, "--epochs", "1", "--stage2.epochs", "1", "--stage2.method", method,
                   "--stage2.tau", "0.5", *extra)
    first = load_file(str(out / "stage1" / "model.safetensors"))
    final = load_file(str(out / "model.safetensors"))
    assert torch.equal(first["head.weight"], final["head.weight"])
    assert not torch.equal(final["head.class_scale"], torch.ones(10))


def test_stage1_leaves_the_class_gain_at_one_and_tau_one_keeps_stage1(tmp_path, cifar10_zip):
    """The paper's stage-1 logits are s * cos: nothing may train the per-class gain; tau-norm at tau=1 is a no-op."""
    out = tiny_run(tmp_path, cifar10_zip, "--epochs", "1", "--warmup-epochs", "1", "--stage2.epochs", "1",
                   "--stage2.method", "tau_norm", "--stage2.tau", "1")
    first = load_file(str(out / "stage1" / "model.safetensors"))
    final = load_file(str(out / "model.safetensors"))
    assert torch.equal(first["head.class_scale"], torch.ones(10))
    # fitted on validation after the last stage, not trained
    calibration = {"logit_scale", "logit_bias", "class_scale", "implied_prior", "source_images"}
    for key in first.keys() - calibration:
        assert torch.equal(first[key], final[key]), key


def test_bad_input_is_a_clear_error(tmp_path, cifar10_zip, capsys):
    base = ["--recipe", "cifar10_lt", "--data-root", str(cifar10_zip), *TINY]
    assert cli.main([*base, "--out", str(tmp_path / "a"), "--imb-ratio", "0.5"]) == 2
    assert "imb_ratio" in capsys.readouterr().err
    assert cli.main(["--recipe", "cifar10_lt", "--out", str(tmp_path / "b"), "--data-root", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()  # refused before training: no empty run folder left behind
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli.main([*base, "--out", str(blocker / "run")]) == 2
    assert "cannot write to the output folder" in capsys.readouterr().err
    assert cli.main(["--resume", str(tmp_path / "never")]) == 2
    assert "is not a run folder" in capsys.readouterr().err


def test_nan_loss_stops_with_the_step(tmp_path, cifar10_zip, capsys):
    code = cli.main(["--recipe", "cifar10_lt", "--out", str(tmp_path / "nan"), "--data-root", str(cifar10_zip), *TINY,
                     "--epochs", "1", "--lr", "1e30", "--loss", "ce", "--head", "linear", "--s", "1", "--stage", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "NaN/inf at stage 1, epoch 1, step" in err


def test_the_data_config_comes_from_timms_registry_and_an_unknown_backbone_is_named():
    """A folder's or list's preprocessing is the backbone's, read without building a model; a typo says so."""
    from timm.data import resolve_model_data_config

    from train.parts import backbone_data_config, build_model

    recipe = load_recipe("imagefolder", {"model": "resnet10t", "pretrained_backbone": False})
    assert backbone_data_config(recipe) == resolve_model_data_config(build_model(recipe, 3))
    with pytest.raises(ValueError, match="unknown timm backbone 'resnet9000'"):
        backbone_data_config({**recipe, "model": "resnet9000"})
