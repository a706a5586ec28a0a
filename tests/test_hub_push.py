"""Push to and pull from a Hub-compatible server on 127.0.0.1 over real HTTP (``tests/hub_server.py``).

Pulls run in fresh processes (``tests/hub_client.py``) because ``huggingface_hub`` reads ``HF_ENDPOINT``,
``HF_HUB_OFFLINE`` and the cache location at import, as a user's process would.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

import gcl_zoo  # noqa: F401
from gcl_zoo.hub import export_run, push_folder
from hub_client import fixed_input
from hub_server import HubServer

TESTS = Path(__file__).resolve().parent
TOKEN = "hf_test_token"
ZOO_NAME = "gcl_resnet32_cifar100_lt.ir50"  # its packaged weights are left out of the users' install below
REPO_ID = f"org/{ZOO_NAME}"


@pytest.fixture(scope="module")
def hub():
    with HubServer(tokens={TOKEN}) as server:
        yield server


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory) -> Path:
    """One Hugging Face home (cache + login) shared by the processes of this module, as on a user's machine."""
    return tmp_path_factory.mktemp("hf_home")


def _install_without_zoo_weights(root: Path) -> Path:
    """A copy of ``gcl_zoo`` whose package lacks ``ZOO_NAME``'s weights (as a slim wheel would), so that the zoo name
    can only be served from the Hub; made once under ``root``."""
    site = root / "install_without_zoo_weights"
    if not site.is_dir():
        shutil.copytree(TESTS.parent / "gcl_zoo", site / "gcl_zoo", ignore=shutil.ignore_patterns(f"{ZOO_NAME}.*"))
    return site


def _env(hub: HubServer, hf_home: Path, **extra: str) -> dict:
    """The environment of a user's process: our server, a private HF home, no real token or network."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "GCL_ZOO_"))}
    site = _install_without_zoo_weights(hf_home.parent)
    env.update(PYTHONPATH=os.pathsep.join([str(site), str(TESTS.parent)]), HF_ENDPOINT=hub.url, HF_HOME=str(hf_home),
               HF_HUB_CACHE=str(hf_home / "hub"), HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
               OMP_NUM_THREADS="1")
    env.update(extra)
    return env


def _run(args: list, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=120)


def _pull(hub: HubServer, hf_home: Path, out: Path, names: list, **env: str) -> dict:
    proc = _run([str(TESTS / "hub_client.py"), str(out), *names], _env(hub, hf_home, **env))
    assert proc.returncode == 0, proc.stderr
    return json.loads((out / "results.json").read_text())


def _reference(folder: Path) -> dict:
    """What the pushed folder computes, loaded locally with one thread like the pulling processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
        with torch.no_grad():
            return {**model.state_dict(), "__output__": model(fixed_input())}
    finally:
        torch.set_num_threads(threads)


def _assert_same(pulled: Path, reference: dict) -> None:
    tensors = load_file(str(pulled))
    assert tensors.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(tensors[key], value), key


@pytest.fixture(scope="module")
def pushed(hub, hf_home, make_run, tmp_path_factory):
    """An exported run pushed with the CLI, the token taken from the login cache (HF_HOME/token)."""
    folder = export_run(make_run(arch=ZOO_NAME.split(".")[0]), tmp_path_factory.mktemp("exported") / ZOO_NAME,
                        repo_id=REPO_ID)
    push = ["-m", "gcl_zoo.cli", "push", str(folder), "--repo-id", REPO_ID]
    denied = _run(push, _env(hub, hf_home))
    assert denied.returncode == 1 and "no Hugging Face token" in denied.stderr and "HF_TOKEN" in denied.stderr
    (hf_home / "token").write_text(TOKEN)
    done = _run(push, _env(hub, hf_home))
    assert done.returncode == 0, done.stderr
    return folder, done.stdout


def test_push_uploads_the_folder_and_prints_the_commit_url(hub, pushed):
    folder, stdout = pushed
    oid = hub.repos[REPO_ID].refs["main"]
    assert f"commit: {hub.url}/{REPO_ID}/commit/{oid}" in stdout
    files = hub.files(REPO_ID)
    for path in folder.iterdir():
        assert files[path.name] == path.read_bytes(), path.name
    assert ("POST", f"/api/models/{REPO_ID}/preupload/main") in hub.requests


@pytest.fixture(scope="module")
def pickled_repo(hub, pushed, tmp_path_factory) -> str:
    """A repo holding the model as ``pytorch_model.bin`` only, uploaded with huggingface_hub directly (gcl-zoo push
    refuses such a folder)."""
    from huggingface_hub import HfApi

    folder, _ = pushed
    pickled = tmp_path_factory.mktemp("pickled")
    (pickled / "config.json").write_bytes((folder / "config.json").read_bytes())
    torch.save(timm.create_model(f"local-dir:{folder}", pretrained=True).state_dict(), pickled / "pytorch_model.bin")
    api = HfApi(endpoint=hub.url, token=TOKEN)
    api.create_repo("org/pickled")
    api.upload_folder(repo_id="org/pickled", folder_path=pickled)
    return "org/pickled"


@pytest.fixture(scope="module")
def pulled(hub, hf_home, pushed, pickled_repo, tmp_path_factory):
    """One user process pulling the pushed repo by ``hf-hub:`` and by zoo name (GCL_ZOO_HUB_ORG=org), plus a
    missing repo, a zoo entry nobody pushed and the pickle-only repo; with the requests it sent."""
    out = tmp_path_factory.mktemp("pulled")
    before = len(hub.requests)
    names = [f"hf-hub:{REPO_ID}", ZOO_NAME, "hf-hub:org/does-not-exist", "gcl_resnet50_inat18",
             f"hf-hub:{pickled_repo}"]
    results = _pull(hub, hf_home, out, names, GCL_ZOO_HUB_ORG="org")
    return out, {entry["name"]: entry for entry in results["models"]}, results, hub.requests[before:]


def test_pull_through_hf_hub_and_zoo_name_equals_pushed(pushed, pulled):
    folder, _ = pushed
    out, models, results, _ = pulled
    reference = _reference(folder)
    labels = json.loads((folder / "config.json").read_text())["label_names"]
    for name in (f"hf-hub:{REPO_ID}", ZOO_NAME):
        assert "error" not in models[name], models[name]
        _assert_same(out / models[name]["file"], reference)
        assert models[name]["label_names"] == labels
    # the zoo entries now resolve to the org's repos, and list_pretrained says so
    assert ZOO_NAME in results["list_pretrained"] and "gcl_resnet50_imagenet_lt" in results["list_pretrained"]


def test_loading_never_fetches_a_pickle(pulled):
    *_, requests = pulled
    downloads = {path.rsplit("/", 1)[-1] for _, path in requests if "/resolve/" in path}
    assert downloads == {"config.json", "model.safetensors"}


def test_missing_repos_give_one_clear_error(pulled):
    _, models, _, _ = pulled
    missing = models["hf-hub:org/does-not-exist"]["error"]
    assert "RepositoryNotFoundError" in missing and "org/does-not-exist" in missing
    zoo = models["gcl_resnet50_inat18"]["error"]
    assert zoo.startswith("RuntimeError: Hub repo org/gcl_resnet50_inat18 does not exist")
    assert "GCL_ZOO_HUB_ORG='org'" in zoo and "gcl-zoo push" in zoo


def test_pickle_only_repo_is_refused_not_unpickled(pulled, pickled_repo):
    _, models, _, _ = pulled
    error = models[f"hf-hub:{pickled_repo}"]["error"]
    assert f"Hub repo {pickled_repo} has no model.safetensors: gcl-zoo loads weights from safetensors only" in error


def test_offline_loading_from_the_cache(hub, hf_home, pushed, pulled, tmp_path):
    folder, _ = pushed
    requests_before = len(hub.requests)
    results = _pull(hub, hf_home, tmp_path, [f"hf-hub:{REPO_ID}", ZOO_NAME, "gcl_resnet50_inat18"],
                    HF_HUB_OFFLINE="1", GCL_ZOO_HUB_ORG="org")
    assert len(hub.requests) == requests_before  # nothing went over the network
    reference = _reference(folder)
    *cached, uncached = results["models"]
    for entry in cached:
        assert "error" not in entry, entry
        _assert_same(tmp_path / entry["file"], reference)
    error = uncached["error"]
    assert error.startswith("WeightsNotCachedError: the weights of gcl_resnet50_inat18 (model.safetensors of Hub "
                            "repo org/gcl_resnet50_inat18) are not in the Hub cache and cannot be downloaded: "
                            "HF_HUB_OFFLINE is set")
    assert "local-dir:FOLDER" in error and "hf download org/gcl_resnet50_inat18 model.safetensors" in error
    assert "GCL_ZOO_HUB_ORG='org'" in error


def test_push_to_a_branch_and_as_a_pull_request(hub, pushed, tmp_path):
    folder, _ = pushed
    main_before = hub.repos[REPO_ID].refs["main"]
    (folder / "eval.json").write_text((folder / "eval.json").read_text().replace("81.25", "81.5"))
    info = push_folder(folder, REPO_ID, revision="v2", token=TOKEN, endpoint=hub.url)
    assert hub.files(REPO_ID, "v2")["eval.json"] == (folder / "eval.json").read_bytes()
    assert info.commit_url.endswith(hub.repos[REPO_ID].refs["v2"])
    info = push_folder(folder, REPO_ID, create_pr=True, token=TOKEN, endpoint=hub.url)
    assert info.pr_url == f"{hub.url}/{REPO_ID}/discussions/1"
    assert hub.files(REPO_ID, "refs/pr/1")["eval.json"] == (folder / "eval.json").read_bytes()
    assert hub.repos[REPO_ID].refs["main"] == main_before  # neither touched the default branch


def test_private_repo_is_created_private(hub, pushed, tmp_path):
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RepositoryNotFoundError

    folder, _ = pushed
    push_folder(folder, "org/private-model", private=True, token=TOKEN, endpoint=hub.url)
    assert hub.repos["org/private-model"].private
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("org/private-model", "config.json", endpoint=hub.url, cache_dir=tmp_path, token=False)
    assert Path(hf_hub_download("org/private-model", "config.json", endpoint=hub.url, cache_dir=tmp_path,
                                token=TOKEN)).read_bytes() == (folder / "config.json").read_bytes()
