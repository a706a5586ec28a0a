"""``gcl-zoo predict``: a folder of real JPEGs in, one row per image out, with the labels and scores a real server on
loopback gives for the same files and settings (the target prior included); an unreadable file is listed and left
out, with exit code 1 unless ``--bad-images skip``."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from gcl_zoo_serve.image_files import collect_image_files
from image_folder import write_image_folder
from server_process import SOURCE_ROOT, ServerProcess

MODEL = "gcl_resnet32_cifar10_lt"
SETTINGS = ["--top-k", "3", "--target-prior", "train", "--runtime", "torch"]  # PyTorch: no ONNX export to wait for


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory, cifar10_zip) -> Path:
    """12 real JPEGs of mixed sizes in class folders, and one file that is not an image."""
    root = tmp_path_factory.mktemp("photos")
    folder = write_image_folder(root, cifar10_zip)["test"]
    (folder / "cat" / "broken.jpg").write_bytes(b"this is not a JPEG")
    return folder


def _predict(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GCL_ZOO_API_KEY": "",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(SOURCE_ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "gcl_zoo.cli", "predict", *args], env=env, capture_output=True,
                          text=True, timeout=300)


def _server_answers(photos: list) -> dict:
    with ServerProcess(["--model", MODEL, *SETTINGS[2:]], env={"GCL_ZOO_API_KEY": ""}) as server:
        files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in photos]
        response = httpx.post(f"{server.url}/predict", files=files, data={"top_k": "3"}, timeout=60)
    assert response.status_code == 200, response.text
    return {str(p): answer for p, answer in zip(photos, response.json()["predictions"])}


def test_predict_a_folder_answers_as_the_server_does(photo_folder, tmp_path):
    out = tmp_path / "predictions.jsonl"
    proc = _predict(MODEL, str(photo_folder), *SETTINGS, "--out", str(out), "--no-progress")
    assert proc.returncode == 1, proc.stderr  # the broken file fails the run ...
    assert "1 of 13 files could not be classified" in proc.stderr and "broken.jpg is not an image" in proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]  # ... after every other file was answered
    photos = sorted(p for p in photo_folder.rglob("*.jpg") if p.name != "broken.jpg")
    assert [row["file"] for row in rows] == [str(p) for p in photos]
    served = _server_answers(photos)
    for row in rows:
        expected = served[row["file"]]
        assert [p["label"] for p in row["predictions"]] == [p["label"] for p in expected]
        assert row["predictions"][0]["score"] > row["predictions"][2]["score"]
        for ours, theirs in zip(row["predictions"], expected):
            assert ours["score"] == pytest.approx(theirs["score"], abs=1e-5)

    skipped = _predict(MODEL, str(photo_folder / "cat"), f"{photo_folder}/bird/*.jpg", *SETTINGS, "--bad-images",
                       "skip")
    assert skipped.returncode == 0, skipped.stderr
    assert "warning: 1 of 7 files could not be classified" in skipped.stderr
    table = list(csv.reader(skipped.stdout.splitlines()))
    assert table[0] == ["file", "label_1", "score_1", "label_2", "score_2", "label_3", "score_3"]
    by_file = {row[0]: row for row in table[1:]}
    assert len(by_file) == 6 and not any("broken" in name for name in by_file)
    for name, row in by_file.items():
        assert row[1::2] == [p["label"] for p in served[name]]
        assert [float(s) for s in row[2::2]] == pytest.approx([p["score"] for p in served[name]], abs=1e-5)


def test_inputs_name_files_folders_and_patterns(tmp_path):
    (tmp_path / "a" / "deep").mkdir(parents=True)
    for name in ("a/2.jpg", "a/1.PNG", "a/deep/3.webp", "a/notes.txt", "b.jpeg"):
        (tmp_path / name).write_bytes(b"x")
    assert collect_image_files([str(tmp_path / "a"), str(tmp_path / "b.jpeg"), str(tmp_path / "a" / "2.jpg")]) == [
        tmp_path / "a" / "1.PNG", tmp_path / "a" / "2.jpg", tmp_path / "a" / "deep" / "3.webp", tmp_path / "b.jpeg"]
    assert collect_image_files([f"{tmp_path}/**/*.webp"]) == [tmp_path / "a" / "deep" / "3.webp"]
    with pytest.raises(FileNotFoundError, match="matches no files"):
        collect_image_files([f"{tmp_path}/*.gif"])
    with pytest.raises(FileNotFoundError, match="neither a file, a folder nor a glob pattern"):
        collect_image_files([str(tmp_path / "absent.jpg")])


def test_a_folder_without_a_model_is_refused_by_name(tmp_path):
    proc = _predict(str(tmp_path), str(tmp_path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{tmp_path} holds no model (model.safetensors + config.json)" in proc.stderr
