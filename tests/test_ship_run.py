"""bench/ship_run.py turns a finished run into a shipped checkpoint: weights, JSON, record and card agree; and
bench/ship_int8.py puts a checked int8 graph beside shipped weights."""
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from safetensors.torch import load_file

from gcl_zoo.models.weights import WEIGHTS_DIR
from test_train import tiny_run

REPO = Path(__file__).resolve().parent.parent


def test_ship_run_writes_weights_record_and_card_without_local_paths(tmp_path, cifar10_zip):
    (REPO / "runs").mkdir(exist_ok=True)
    inside = Path(tempfile.mkdtemp(dir=REPO / "runs", prefix="ship-test-"))  # runs live under the repo's runs/
    try:
        _ship_and_check(inside, tmp_path, cifar10_zip)
    finally:
        shutil.rmtree(inside)


def _ship_and_check(inside: Path, tmp_path: Path, cifar10_zip: Path) -> None:
    run = tiny_run(inside, cifar10_zip, "--model", "cifar_resnet32", "--epochs", "1", "--warmup-epochs", "1",
                   "--stage2.epochs", "1")
    weights, results, cards = tmp_path / "weights", tmp_path / "results", tmp_path / "cards"
    name = "gcl_resnet32_cifar10_lt.ir200"  # a real zoo tag (the tiny run is shipped into temporary folders only)
    done = subprocess.run([sys.executable, "bench/ship_run.py", str(run), name, "--data-root", str(cifar10_zip),
                           "--weights-dir", str(weights), "--results-dir", str(results), "--cards-dir", str(cards)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    shipped = json.loads((weights / f"{name}.json").read_text())
    evaluation = json.loads((run / "eval.json").read_text())
    assert shipped["top1"] == round(evaluation["top1"], 2) and shipped["num_samples"] == 200 and shipped["final_epoch"]
    assert load_file(str(weights / f"{name}.safetensors")).keys() == load_file(str(run / "model.safetensors")).keys()
    record = results / name
    for file in ("recipe.yaml", "run.json", "metrics.jsonl", "eval.json", "per_class_accuracy.png", "tsne.png"):
        assert (record / file).is_file(), file
    card = (cards / f"{name}.md").read_text()
    assert f"value: {shipped['top1']}" in card
    for text in [card, json.dumps(shipped), (record / "run.json").read_text(), (record / "recipe.yaml").read_text()]:
        assert str(REPO) not in text and str(cifar10_zip.resolve().parent.parent) not in text
    assert f"runs/{inside.name}/run" in shipped["command"] and "../shared/data/cifar10/" in shipped["command"]
    # a baseline keeps its record (final and stage-1 evaluations) and ships nothing
    baseline = subprocess.run([sys.executable, "bench/ship_run.py", str(run), "baseline_x", "--data-root",
                               str(cifar10_zip), "--weights-dir", str(weights), "--results-dir", str(results),
                               "--cards-dir", str(cards), "--record-only"], cwd=REPO, capture_output=True, text=True,
                              timeout=600)
    assert baseline.returncode == 0, baseline.stderr[-3000:]
    summary = json.loads((results / "baseline_x" / "summary.json").read_text())
    assert summary["final"]["top1"] == shipped["top1"] and summary["stage1"]["num_samples"] == 200
    assert not (weights / "baseline_x.json").exists() and not (cards / "baseline_x.md").exists()


def test_ship_int8_puts_the_checked_graph_and_its_record_beside_the_weights(tmp_path, cifar10_zip):
    name = "gcl_resnet32_cifar10_lt.ir50"
    weights = tmp_path / "weights"
    weights.mkdir()
    for suffix in (".safetensors", ".json"):
        shutil.copyfile(WEIGHTS_DIR / f"{name}{suffix}", weights / f"{name}{suffix}")
    done = subprocess.run([sys.executable, "bench/ship_int8.py", name, "--data-root", str(cifar10_zip),
                           "--weights-dir", str(weights), "--images", "20", "--held-out", "20"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads((weights / f"{name}.json").read_text())
    entry = info.pop("onnx_int8")
    shipped = json.loads((WEIGHTS_DIR / f"{name}.json").read_text())
    shipped.pop("onnx_int8", None)
    assert info == shipped  # the rest of the record kept as it was
    assert entry["file"] == f"{name}.int8.onnx" and entry["calibration_images"] == entry["held_out_images"] == 20
    assert entry["calibration_source"] == "cifar10.zip:train/" and (weights / entry["file"]).stat().st_size > 100_000
    assert sorted(p.name for p in weights.iterdir()) == sorted([f"{name}.safetensors", f"{name}.json", entry["file"]])
    assert f"shipped {entry['file']}" in done.stdout
