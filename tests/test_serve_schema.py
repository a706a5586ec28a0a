"""Property-based fuzzing of a real server from its own OpenAPI document (schemathesis, every check): no server
error, every status and body as documented, every request the document calls valid answered, every one it calls
invalid refused. The images the document asks for are generated as real images (tests/schema_hooks.py); the
two things a schema cannot say are configured in tests/schemathesis.toml. bench/fuzz_schema.py runs it long."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

import gcl_zoo  # noqa: F401
from gcl_zoo.hub import save_model_folder
from server_process import ServerProcess

TESTS = Path(__file__).resolve().parent


def fuzz(url: str, max_examples: int, seed: int, timeout_s: float = 600) -> subprocess.CompletedProcess:
    """``schemathesis run`` against ``url`` with the hooks and configuration of this folder."""
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "schema_hooks",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "schemathesis.cli", "--config-file", str(TESTS / "schemathesis.toml"),
                           "run", f"{url}/openapi.json", "--max-examples", str(max_examples), "--seed", str(seed),
                           "--no-color"], cwd=TESTS, env=env, capture_output=True, text=True, timeout=timeout_s)


def generated_and_passed(output: str) -> tuple:
    found = re.search(r"(\d+) generated, (\d+) passed", output)
    return (int(found.group(1)), int(found.group(2))) if found else (0, 0)


@pytest.fixture(scope="module")
def model_id(tmp_path_factory) -> str:
    torch.manual_seed(0)
    return f"local-dir:{save_model_folder(timm.create_model('gcl_resnet32_cifar10_lt'), tmp_path_factory.mktemp('m') / 'm')}"


def test_fuzzing_from_the_servers_own_schema_finds_nothing(model_id):
    with ServerProcess(["--model", model_id, "--runtime", "torch"], env={"GCL_ZOO_API_KEY": ""}) as server:
        result = fuzz(server.url, max_examples=15, seed=0)
        log = server.log()
    generated, passed = generated_and_passed(result.stdout)
    assert result.returncode == 0 and generated > 300 and passed == generated, result.stdout[-4000:]
    assert "Traceback" not in log, log[-3000:]
