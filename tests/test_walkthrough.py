"""The "Train on your own images" page, run as written: every command of its ``bash`` blocks, in order, in a folder
holding a small generated ImageFolder of real JPEGs laid out as the page says.

The machine is offline as the page's reader's is (``HF_HUB_OFFLINE=1``), except for the two commands the page runs
where a Hub is reachable (``hf download``, ``gcl-zoo push``), which reach a Hub-compatible server on loopback through
``HF_ENDPOINT``, as the page documents; that server holds a ``timm/resnet18.a1_in1k`` of random weights. The server
the page starts listens on a free port (``GCL_ZOO_SERVE_PORT``, which the page documents), so the page's
``127.0.0.1:8000`` is read as that port.
"""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import timm
import torch
from huggingface_hub import HfApi
from safetensors.torch import save_file

from gcl_zoo.models.backbone import sha256_of
from hub_server import HubServer
from image_folder import write_image_folder
from server_process import free_port

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "train-your-own-images.md"
CLASSES = ("daisy", "tulip", "edelweiss")  # the page's own
TOKEN = "hf_walkthrough_token"
ONLINE = ("hf ", "gcl-zoo push ")  # the commands the page runs where a Hub is reachable


def page_commands(page: Path = PAGE) -> list:
    """The commands of the page's ``bash`` blocks in order, continuation lines joined."""
    blocks = re.findall(r"^```bash\n(.*?)^```", page.read_text(), flags=re.S | re.M)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [" ".join(line.split()) for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _wait_ready(url: str, server: subprocess.Popen, log: Path, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert server.poll() is None, f"the server exited:\n{log.read_text()[-3000:]}"
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"the server was not ready in {timeout_s} s:\n{log.read_text()[-3000:]}")


@pytest.fixture()
def hub(tmp_path):
    """A Hub on loopback holding random resnet18 weights where timm's are."""
    with HubServer(tokens={TOKEN}) as server:
        api = HfApi(endpoint=server.url, token=TOKEN)
        api.create_repo("timm/resnet18.a1_in1k")
        torch.manual_seed(0)
        weights = tmp_path / "resnet18.safetensors"
        save_file(timm.create_model("resnet18").state_dict(), str(weights))
        api.upload_file(path_or_fileobj=str(weights), path_in_repo="model.safetensors",
                        repo_id="timm/resnet18.a1_in1k")
        yield server


@pytest.mark.slow  # a minute: both stages, export, a server and a push, as a user runs them
def test_the_walkthrough_runs_as_written(tmp_path, hub, cifar10_zip):
    work = tmp_path / "work"
    write_image_folder(work / "data", cifar10_zip, counts=(24, 10, 6), names=CLASSES)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "GCL_ZOO_"))}
    env.update(PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]), OMP_NUM_THREADS="1",
               HF_ENDPOINT=hub.url, HF_TOKEN=TOKEN, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_TELEMETRY="1",
               GCL_ZOO_SERVE_PORT=str(port), GCL_ZOO_API_KEY="")
    commands = page_commands()
    assert [c.split()[:2] for c in commands] == [
        ["hf", "download"], ["gcl-zoo", "train"], ["gcl-zoo", "eval"], ["gcl-zoo", "predict"], ["gcl-zoo", "export"],
        ["gcl-zoo", "serve"], ["curl", "-F"], ["gcl-zoo", "push"]]
    outputs, server, log = {}, None, tmp_path / "serve.log"
    try:
        for command in commands:
            run_env = env if command.startswith(ONLINE) else {**env, "HF_HUB_OFFLINE": "1"}
            command = command.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
            if command.startswith("gcl-zoo serve"):
                server = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=work, env=run_env,
                                          stdout=log.open("w"), stderr=subprocess.STDOUT)
                _wait_ready(f"http://127.0.0.1:{port}", server, log)
                continue
            proc = subprocess.run(["bash", "-c", command], cwd=work, env=run_env, capture_output=True, text=True,
                                  timeout=300)
            assert proc.returncode == 0, f"{command}\n{proc.stderr[-3000:]}"
            outputs[command.split()[1]] = proc.stdout
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)

    weights = work / "weights" / "resnet18" / "model.safetensors"
    run = work / "runs" / "my-run"
    info = json.loads((run / "run.json").read_text())
    assert info["backbone_weights"] == {"source": "file", "path": str(weights.resolve()), "sha256": sha256_of(weights)}
    assert {json.loads(line)["stage"] for line in (run / "metrics.jsonl").read_text().splitlines()} == {1, 2}
    assert (run / "eval.json").is_file() and (run / "reliability.png").is_file()
    rows = (work / "predictions.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 * len(CLASSES) and all(row.split(",")[1] in CLASSES for row in rows[1:])
    answer = json.loads(outputs["-F"])["predictions"][0]
    assert len(answer) == 3 and answer[0]["label"] in CLASSES
    assert {"model.safetensors", "config.json", "model.onnx"} <= set(hub.files("my-org/my-model", "main"))


def test_the_page_is_in_the_site():
    assert "train-your-own-images.md" in (ROOT / "mkdocs.yml").read_text()
