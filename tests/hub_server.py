"""A small Hugging Face Hub look-alike for the tests: the endpoints ``huggingface_hub`` calls to create a repo,
upload a folder, open a pull request and download files, served over real HTTP on 127.0.0.1.

Files are kept in memory, one snapshot per commit. The pre-upload endpoint answers ``"regular"`` for every file,
so clients send contents inline in the commit (base64) and no LFS or Xet storage is needed; that is the path the
real Hub takes for small files, and every ``huggingface_hub`` version supports it.

    with HubServer(tokens={"hf_test"}) as hub:
        os.environ["HF_ENDPOINT"] = hub.url      # before huggingface_hub is imported, or pass endpoint=hub.url
"""
from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import unquote

import uvicorn
import yaml
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

__all__ = ["HubServer", "Repo"]


def git_blob_sha(data: bytes) -> str:
    """The git object id of a blob, which the Hub reports as a regular file's oid and ETag."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    repo_id: str
    private: bool = False
    refs: dict[str, str] = field(default_factory=dict)  # branch or refs/pr/N -> commit oid
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit oid -> {path: content}
    pulls: list[dict] = field(default_factory=list)

    def commit(self, ref: str, files: dict[str, bytes], summary: str) -> str:
        parent = self.refs.get(ref, "")
        digest = hashlib.sha1(parent.encode() + summary.encode() + str(len(self.commits)).encode())
        for path in sorted(files):
            digest.update(path.encode() + git_blob_sha(files[path]).encode())
        oid = digest.hexdigest()
        self.commits[oid] = dict(files)
        self.refs[ref] = oid
        return oid

    def resolve(self, revision: str) -> str | None:
        """Commit oid for a branch, PR ref or (full) commit oid; None when unknown."""
        if revision in self.refs:
            return self.refs[revision]
        return revision if revision in self.commits else None


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status,
                        headers={"X-Error-Code": code, "X-Error-Message": message, **(headers or {})})


class HubServer:
    """The fake Hub, run by uvicorn in a thread on a free loopback port; use it as a context manager."""

    def __init__(self, tokens: Iterable[str] = ("hf_test",), user: str = "tester"):
        self.tokens = set(tokens)
        self.user = user
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, for assertions
        self.url = ""
        self.app = self._build_app()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------
    def __enter__(self) -> HubServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the fake Hub server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.should_exit = True
        self._thread.join(timeout=10)

    # -- helpers ---------------------------------------------------------------------------------------------
    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """The files of ``repo_id`` at ``revision`` (for assertions)."""
        repo = self.repos[repo_id]
        return repo.commits[repo.resolve(revision)]

    def _authorized(self, request: Request) -> bool:
        auth = request.headers.get("authorization", "")
        return auth.startswith("Bearer ") and auth[len("Bearer "):] in self.tokens

    def _repo(self, request: Request, repo_id: str) -> Repo | None:
        """The repo if it exists and the caller may see it (private repos need a valid token)."""
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and not self._authorized(request)):
            return None
        return repo

    # -- endpoints -------------------------------------------------------------------------------------------
    def _build_app(self) -> FastAPI:
        app = FastAPI()
        hub = self

        @app.middleware("http")
        async def log_requests(request: Request, call_next):
            hub.requests.append((request.method, request.url.path))
            return await call_next(request)

        def unauthorized() -> JSONResponse:
            return _error(401, "Unauthorized", "Invalid credentials in Authorization header")

        def repo_not_found(repo_id: str) -> JSONResponse:
            return _error(404, "RepoNotFound", f"Repository not found: {repo_id}")

        def writable_repo(request: Request, repo_id: str):
            """The repo a write request names, or the 401/404 answer the Hub gives instead."""
            if not hub._authorized(request):
                return unauthorized()
            repo = hub._repo(request, repo_id)
            return repo_not_found(repo_id) if repo is None else repo

        @app.post("/api/repos/create")
        async def create_repo(request: Request):
            if not hub._authorized(request):
                return unauthorized()
            body = await request.json()
            if body.get("type", "model") != "model":
                return _error(400, "BadRequest", "only model repos are supported here")
            repo_id = f"{body.get('organization') or hub.user}/{body['name']}"
            url = f"{hub.url}/{repo_id}"
            if repo_id in hub.repos:
                return JSONResponse({"error": "You already created this model repo", "url": url}, status_code=409)
            private = bool(body.get("private")) or body.get("visibility") == "private"
            repo = hub.repos[repo_id] = Repo(repo_id, private=private)
            repo.commit("main", {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"},
                        "initial commit")
            return {"url": url, "name": repo_id, "id": repo_id}

        @app.get("/api/models/{namespace}/{name}")
        @app.get("/api/models/{namespace}/{name}/revision/{revision:path}")
        async def model_info(request: Request, namespace: str, name: str, revision: str = "main"):
            repo = hub._repo(request, f"{namespace}/{name}")
            if repo is None:
                return repo_not_found(f"{namespace}/{name}")
            oid = repo.resolve(revision)
            if oid is None:
                return _error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return {"id": repo.repo_id, "modelId": repo.repo_id, "sha": oid, "private": repo.private,
                    "siblings": [{"rfilename": path} for path in sorted(repo.commits[oid])]}

        @app.post("/api/models/{namespace}/{name}/preupload/{revision:path}")
        async def preupload(request: Request, namespace: str, name: str, revision: str):
            repo = writable_repo(request, f"{namespace}/{name}")
            if isinstance(repo, JSONResponse):
                return repo
            current = repo.commits.get(repo.resolve(revision) or "", {})
            body = await request.json()
            files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                      "oid": git_blob_sha(current[f["path"]]) if f["path"] in current else None}
                     for f in body["files"]]
            return {"files": files, "commitOid": repo.resolve(revision)}

        @app.post("/api/models/{namespace}/{name}/commit/{revision:path}")
        async def commit(request: Request, namespace: str, name: str, revision: str):
            repo = writable_repo(request, f"{namespace}/{name}")
            if isinstance(repo, JSONResponse):
                return repo
            base = repo.resolve(revision)
            if base is None:
                return _error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            ref, pr_url = revision, None
            if request.query_params.get("create_pr") == "1":
                ref, pr_url = hub._open_pull(repo, revision, "Upload files")
                repo.refs[ref] = base
            files = dict(repo.commits[base])
            summary = ""
            for line in (await request.body()).splitlines():
                item = json.loads(line)
                key, value = item["key"], item["value"]
                if key == "header":
                    summary = value["summary"]
                    parent = value.get("parentCommit")
                    if parent and not base.startswith(parent):
                        return _error(412, "PreconditionFailed", "parent commit is not the head of the revision")
                elif key == "file":
                    files[value["path"]] = base64.b64decode(value["content"])
                elif key == "deletedFile":
                    files.pop(value["path"], None)
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    files = {p: c for p, c in files.items() if not p.startswith(prefix)}
                else:
                    return _error(400, "BadRequest", f"unsupported commit operation {key!r} (files are 'regular')")
            oid = repo.commit(ref, files, summary)
            return {"commitUrl": f"{hub.url}/{repo.repo_id}/commit/{oid}", "commitOid": oid,
                    "pullRequestUrl": pr_url, "success": True}

        @app.post("/api/models/{namespace}/{name}/branch/{branch:path}")
        async def create_branch(request: Request, namespace: str, name: str, branch: str):
            repo = writable_repo(request, f"{namespace}/{name}")
            if isinstance(repo, JSONResponse):
                return repo
            if branch in repo.refs:
                return _error(409, "Conflict", f"branch {branch} already exists")
            body = await request.json() if await request.body() else {}
            start = repo.resolve(body.get("startingPoint") or "main")
            if start is None:
                return _error(404, "RevisionNotFound", f"Invalid rev id: {body.get('startingPoint')}")
            repo.refs[branch] = start
            return {}

        @app.post("/api/models/{namespace}/{name}/discussions")
        async def create_discussion(request: Request, namespace: str, name: str):
            repo = writable_repo(request, f"{namespace}/{name}")
            if isinstance(repo, JSONResponse):
                return repo
            body = await request.json()
            if not body.get("pullRequest"):
                return _error(400, "BadRequest", "only pull requests are supported here")
            ref, _ = hub._open_pull(repo, "main", body.get("title", ""))
            repo.refs[ref] = repo.refs["main"]
            return {"num": len(repo.pulls), "url": f"{hub.url}/{repo.repo_id}/discussions/{len(repo.pulls)}"}

        @app.get("/api/models/{namespace}/{name}/discussions/{num}")
        async def discussion(request: Request, namespace: str, name: str, num: int):
            repo = hub._repo(request, f"{namespace}/{name}")
            if repo is None or not 0 < num <= len(repo.pulls):
                return repo_not_found(f"{namespace}/{name}")
            pull = repo.pulls[num - 1]
            return {"num": num, "title": pull["title"], "status": "draft", "isPullRequest": True,
                    "createdAt": "2024-01-01T00:00:00.000Z", "author": {"name": hub.user},
                    "repo": {"name": repo.repo_id, "type": "model"}, "events": [],
                    "changes": {"base": pull["base"]}, "filesWithConflicts": []}

        @app.post("/api/validate-yaml")
        async def validate_yaml(request: Request):
            body = await request.json()
            content = body.get("content", "")
            if not content.startswith("---"):
                return {"errors": [], "warnings": [{"message": "empty or missing yaml metadata in repo card"}]}
            try:
                metadata = yaml.safe_load(content.split("---", 2)[1])
            except yaml.YAMLError as exc:
                return JSONResponse({"errors": [{"message": f"invalid YAML: {exc}"}]}, status_code=400)
            if not isinstance(metadata, dict):
                return JSONResponse({"errors": [{"message": "metadata must be a mapping"}]}, status_code=400)
            return {"errors": [], "warnings": []}

        @app.api_route("/{namespace}/{name}/resolve/{rest:path}", methods=["GET", "HEAD"])
        async def resolve(request: Request, namespace: str, name: str, rest: str):
            repo_id = f"{namespace}/{name}"
            repo = hub._repo(request, repo_id)
            if repo is None:
                return repo_not_found(repo_id)
            # the revision is one URL-quoted segment (it may hold '/', as in refs/pr/1): split the raw path
            raw = request.scope["raw_path"].decode().split("/resolve/", 1)[1]
            revision, _, filename = raw.partition("/")
            revision, filename = unquote(revision), unquote(filename)
            oid = repo.resolve(revision)
            if oid is None:
                return _error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            files = repo.commits[oid]
            if filename not in files:
                return _error(404, "EntryNotFound", f"{filename} does not exist at {revision}",
                              headers={"X-Repo-Commit": oid})
            data = files[filename]
            headers = {"X-Repo-Commit": oid, "ETag": f'"{git_blob_sha(data)}"', "Content-Length": str(len(data))}
            if request.method == "HEAD":
                return Response(status_code=200, headers=headers)
            return Response(content=data, headers=headers, media_type="application/octet-stream")

        return app

    def _open_pull(self, repo: Repo, base: str, title: str) -> tuple[str, str]:
        repo.pulls.append({"title": title, "base": base})
        num = len(repo.pulls)
        return f"refs/pr/{num}", f"{self.url}/{repo.repo_id}/discussions/{num}"
