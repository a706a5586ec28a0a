"""The paired validation comparison: its statistics, and a real run of the script on two models' validation split."""
import json
import subprocess
import sys

import torch

from gcl_zoo.metrics import mcnemar_p, paired_bootstrap
from train.recipes import dump_recipe, load_recipe


def test_mcnemar_p_is_the_exact_binomial_tail():
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(5, 5) == 1.0
    assert mcnemar_p(0, 10) == 2 / 1024  # ten wins out of ten: both tails of a fair coin
    assert mcnemar_p(2, 8) == mcnemar_p(8, 2) == 2 * (1 + 10 + 45) / 1024


def test_bootstrap_interval_brackets_the_difference():
    base = torch.tensor([True] * 50 + [False] * 50)
    assert paired_bootstrap(base, base.clone(), 500, 0) == (0.0, 0.0)
    better = base.clone()
    better[50:70] = True  # 20 more right out of 100: +20 points
    low, high = paired_bootstrap(base, better, 2000, 0)
    assert 10 < low < 20 < high < 30


def test_script_compares_two_models_on_validation_only(make_run, cifar10_zip, tmp_path):
    base, other = make_run(optional=(), seed=0), make_run(optional=(), seed=1)
    recipe = load_recipe("cifar10_lt", {"val_per_class": 20, "test_per_class": 1})  # the split: the base run's
    dump_recipe(recipe, base / "recipe.yaml")
    out = tmp_path / "paired.json"
    done = subprocess.run([sys.executable, "bench/paired_val.py", "--recipe-from", str(base), "--data-root",
                           str(cifar10_zip), "--model", f"base={base}", "--model", f"again={base}",
                           "--model", f"other={other}", "--draws", "200", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["split"] == "val" and result["test_set_read"] is False
    base_row, again, other_row = result["models"]
    assert base_row["val_images"] == 180 and "against_base" not in base_row  # 20 of 9 classes: the head has none
    assert again["against_base"] == {"top1_difference": 0.0, "bootstrap_95": [0.0, 0.0], "base_right_only": 0,
                                     "this_right_only": 0, "mcnemar_p": 1.0}
    versus = other_row["against_base"]
    right_diff = versus["this_right_only"] - versus["base_right_only"]
    assert abs(versus["top1_difference"] - right_diff * 100 / 180) < 1e-4


def test_script_refuses_a_model_without_a_name(make_run, cifar10_zip):
    run = make_run()
    done = subprocess.run([sys.executable, "bench/paired_val.py", "--recipe-from", str(run), "--model", str(run),
                           "--model", f"b={run}"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "NAME=FOLDER_OR_ZOO_NAME" in done.stderr
    unknown = subprocess.run([sys.executable, "bench/paired_val.py", "--recipe-from", str(run), "--model", f"a={run}",
                              "--model", "b=gcl_resnet32_nowhere"], capture_output=True, text=True, timeout=300)
    assert unknown.returncode == 2 and "neither a folder nor a zoo name" in unknown.stderr
