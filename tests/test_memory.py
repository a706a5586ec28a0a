"""The allocator tuning the server applies: forward passes stop faulting their memory in."""
import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# page faults per forward pass of a ResNet-32 batch of 64, before and after the tuning, in a fresh process
PROBE = """
import json, resource, torch, timm, gcl_zoo
from serve.startup import retain_freed_memory
model = timm.create_model("gcl_resnet32_cifar10_lt").eval()
x = torch.randn(64, 3, 32, 32)

def faults_per_pass():
    with torch.inference_mode():
        model(x)
        start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(5):
            model(x)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / 5

before = faults_per_pass()
applied = retain_freed_memory()
print(json.dumps({"before": before, "applied": applied, "after": faults_per_pass()}))
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's allocator")
def test_retained_memory_removes_per_batch_page_faults():
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    faults = json.loads(result.stdout.strip().splitlines()[-1])
    assert faults["applied"]
    assert faults["before"] > 1000  # each pass maps its activations afresh
    assert faults["after"] < faults["before"] / 20
