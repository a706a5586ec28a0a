"""What `pip install .` puts into a fresh venv's site-packages: the library and the two applications under names of their own
(no top-level `train` or `serve`), the recipes and shipped weights, no test harness; and every console command
works from that install, outside the source tree."""
from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_wheel_installs_no_generic_names_and_its_commands_run(tmp_path):
    # built from a copy of the tracked sources: a build folder left in the checkout could carry stale modules
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    source = tmp_path / "src"
    for name in tracked:
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("gcl_zoo-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"gcl_zoo", "gcl_zoo_train", "gcl_zoo_serve"}
    assert "gcl_zoo_train/recipes/cifar100_lt.yaml" in names and "gcl_zoo_serve/__main__.py" in names
    assert any(n.startswith("gcl_zoo/weights/") and n.endswith(".safetensors") for n in names)
    assert any(n.startswith("gcl_zoo/weights/") and n.endswith(".int8.onnx") for n in names)
    assert not any(n.endswith("testing.py") or n.startswith("tests/") for n in names)
    entry_points = next(zipfile.ZipFile(wheel).read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert "gcl_zoo_train.cli:main" in entry_points and "gcl_zoo_serve.cli:main" in entry_points

    # a fresh venv: the wheel is its only gcl-zoo; torch, timm and the rest come from this interpreter's
    # site-packages as a plain path entry, so that folder's own .pth files (a checkout's editable install) never run
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    purelib = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    (purelib / "borrowed_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
                                "-q", str(wheel)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-3000:]
    assert not (purelib / "train").exists() and not (purelib / "serve").exists()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), cwd=outside, env=env, capture_output=True, text=True, timeout=300)

    script = run("gcl-zoo", "--help")  # the console script pip wrote into the venv
    assert script.returncode == 0 and "train" in script.stdout and "serve" in script.stdout, script.stderr[-3000:]
    # README's torchrun form, from the install: each rank runs gcl_zoo_train (here --help, which exits 0)
    ranks = run(python, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone", "-m", "gcl_zoo_train",
                "--help")
    assert ranks.returncode == 0 and ranks.stdout.count("usage: gcl-zoo train") == 2, ranks.stderr[-3000:]
    # every subcommand through the console script's dispatcher, in one interpreter (each --help exits)
    probe = ("import runpy, sys\nfrom gcl_zoo.cli import main\n"
             "for command in ('train', 'eval', 'export', 'push', 'serve'):\n"
             "    try:\n        main([command, '--help'])\n    except SystemExit as exit_:\n"
             "        assert not exit_.code, command\n"
             "for module in ('gcl_zoo_train', 'gcl_zoo_serve'):  # what `python -m` and `torchrun -m` run\n"
             "    sys.argv = [module, '--help']\n    try:\n        runpy.run_module(module, run_name='__main__')\n"
             "    except SystemExit as exit_:\n        assert not exit_.code, module\n"
             "import gcl_zoo_train, gcl_zoo_serve, importlib.util as u\n"
             "print('FILES', gcl_zoo_train.__file__, gcl_zoo_serve.__file__, u.find_spec('train'), u.find_spec('serve'))\n")
    done = run(python, "-c", probe)
    assert done.returncode == 0, done.stderr[-3000:]
    for command in ("train", "eval", "export", "push", "serve"):
        assert f"usage: gcl-zoo {command}" in done.stdout, command
    files = done.stdout.split("FILES ", 1)[1].split()
    assert files[0].startswith(str(purelib)) and files[1].startswith(str(purelib)) and files[2:] == ["None", "None"]
