"""What the server promises under floods, slow clients and shutdown, against real server processes and real
sockets: bounded body memory, 408 for trickled headers and bodies, SIGTERM drains and exits 0."""
from __future__ import annotations

import asyncio
import io
import select
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import timm
import torch
from PIL import Image

import gcl_zoo  # noqa: F401
from gcl_zoo.hub import save_model_folder
from serve.settings import ServeSettings
from server_process import ServerProcess

NO_KEY = {"GCL_ZOO_API_KEY": ""}


@pytest.fixture(scope="module")
def model_id(tmp_path_factory) -> str:
    torch.manual_seed(0)
    folder = save_model_folder(timm.create_model("gcl_resnet32_cifar10_lt"), tmp_path_factory.mktemp("m") / "m")
    return f"local-dir:{folder}"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def noise_png(megabytes: float) -> bytes:
    side = int((megabytes * 2**20 / 3) ** 0.5)
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(
        out, format="PNG", compress_level=0)
    return out.getvalue()


def test_inflight_budget_must_hold_one_body():
    with pytest.raises(ValueError, match="max_inflight_mb .* must be at least max_body_mb"):
        ServeSettings(max_body_mb=20, max_inflight_mb=10)


def test_a_flood_of_maximal_uploads_holds_no_more_than_the_budget(model_id):
    """48 concurrent 3 MB uploads against an 8 MB budget: each is answered 200 or 503 (with Retry-After), the
    process grows by a small multiple of the budget, not of the flood (48 x 3 MB), and answers normally after."""
    image = noise_png(2.9)
    args = ["--model", model_id, "--runtime", "torch", "--max-body-mb", "3", "--max-inflight-mb", "8",
            "--max-queue", "64", "--max-images", "1"]
    with ServerProcess(args, env=NO_KEY) as server:
        baseline = rss_mb(server.proc.pid)
        peak = [baseline]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], rss_mb(server.proc.pid))
                time.sleep(0.01)

        sampler = threading.Thread(target=sample)
        sampler.start()

        async def flood() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=48)) as http:
                return await asyncio.gather(*(http.post(f"{server.url}/predict", files=[("files", ("n.png", image,
                                                                                                    "image/png"))])
                                              for _ in range(48)), return_exceptions=True)

        try:
            responses = asyncio.run(flood())
        finally:
            done.set()
            sampler.join()
        assert all(isinstance(r, httpx.Response) for r in responses), [r for r in responses if isinstance(r, Exception)][:3]
        answered = responses
        statuses = [r.status_code for r in answered]
        assert set(statuses) <= {200, 503} and statuses.count(200) >= 2 and statuses.count(503) >= 1, statuses
        for response in answered:
            if response.status_code == 503:
                assert response.headers["retry-after"] == "1" and "request bodies" in response.json()["error"]
        growth = peak[0] - baseline
        assert growth < 6 * 8 + 40, f"grew {growth:.0f} MB under a budget of 8 MB (the flood carried 139 MB)"
        after = httpx.post(f"{server.url}/predict", files=[("files", ("n.png", image, "image/png"))], timeout=60)
        assert after.status_code == 200


def _raw_exchange(port: int, chunks: list[bytes], pause_s: float, wait_s: float) -> (bytes, float):
    """Send ``chunks`` with ``pause_s`` between them (stopping if the server closes), then read the answer."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(wait_s)
        try:
            for chunk in chunks:
                if select.select([sock], [], [], 0)[0]:  # the server answered (and closes): read, send no more
                    break
                sock.sendall(chunk)
                time.sleep(pause_s)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = b""
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
        except (TimeoutError, ConnectionResetError):
            pass
    return answer, time.monotonic() - start


def test_trickled_headers_and_bodies_are_cut_off_with_408(model_id):
    args = ["--model", model_id, "--runtime", "torch", "--header-timeout-s", "1.5", "--body-timeout-s", "2"]
    with ServerProcess(args, env=NO_KEY) as server:
        headers = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nX-Slow: " + b"a" * 40
        answer, took = _raw_exchange(server.port, [headers[i:i + 1] for i in range(len(headers))], 0.1, 10)
        assert answer.startswith(b"HTTP/1.1 408") and b"headers did not arrive" in answer and took < 6
        body = noise_png(0.01)
        head = (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: "
                + str(len(body)).encode() + b"\r\n\r\n")
        answer, took = _raw_exchange(server.port, [head] + [body[i:i + 10] for i in range(0, 400, 10)], 0.1, 10)
        assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 2 s" in answer and took < 8
        assert httpx.get(f"{server.url}/ready").status_code == 200  # and it still serves


def test_sigterm_drains_answers_in_flight_requests_and_exits_0(model_id, cifar10_zip):
    """A request waiting for its batch (3 s) when SIGTERM arrives is answered; meanwhile /ready and new work
    answer 503; then the process exits with status 0."""
    from serve_images import cifar_test_images

    image = cifar_test_images(cifar10_zip, per_class=1)[0][1]
    args = ["--model", model_id, "--runtime", "torch", "--max-wait-ms", "3000", "--shutdown-grace-s", "20"]
    server = ServerProcess(args, env=NO_KEY).start()
    try:
        answer = {}
        slow = threading.Thread(target=lambda: answer.setdefault("r", httpx.post(
            f"{server.url}/predict", files=[("files", ("a.webp", image, "image/webp"))], timeout=30)))
        slow.start()
        time.sleep(0.8)
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        ready = httpx.get(f"{server.url}/ready", timeout=5)
        refused = httpx.post(f"{server.url}/predict", files=[("files", ("b.webp", image, "image/webp"))], timeout=5)
        slow.join(30)
        code = server.proc.wait(30)
    finally:
        server.stop()
    assert ready.status_code == 503 and "shutting down" in ready.json()["error"]
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert answer["r"].status_code == 200 and len(answer["r"].json()["predictions"]) == 1
    assert code == 0
