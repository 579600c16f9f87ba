"""The server on a real uvicorn (127.0.0.1, a free port, in a thread), called the way the lab's robot calls it
and through ``VLAClient``: auth, bad input, concurrency, and the client's stop-on-failure behaviour."""

import base64
import io
import socket
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from mobile_vla.serving.app import ServerConfig, create_app
from mobile_vla.serving.client import VLAClient
from mobile_vla.serving.protocol import encode_image
from mobile_vla.serving.server import BackgroundServer
from mobile_vla.serving.testing import ChunkPolicy, ImageStatsPolicy, NaNPolicy, SlowPolicy

KEY = "live-key-5d1c8e0b7a2f4e93"
LEFT = "Navigate around obstacles and reach the front of the beverage bottle on the left"

pytestmark = pytest.mark.timeout(60)


def frame(seed: int, height: int = 36, width: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def serve(policy, **config):
    config.setdefault("api_key", KEY)
    return BackgroundServer(create_app(policy, {"model_name": "fake"}, ServerConfig(**config)))


def lab_style_request(url: str, image: np.ndarray, api_key: str, timeout: float = 5.0) -> httpx.Response:
    """What the lab's robot client does: JPEG -> base64 in JSON, the key in X-API-Key."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=85)
    payload = {"image": base64.b64encode(buffer.getvalue()).decode(), "instruction": LEFT}
    return httpx.post(f"{url}/predict", json=payload, headers={"X-API-Key": api_key}, timeout=timeout)


def test_a_lab_style_client_gets_actions_and_a_wrong_key_gets_403():
    with serve(ImageStatsPolicy()) as server:
        assert httpx.get(f"{server.url}/health").json()["status"] == "healthy"
        ok = lab_style_request(server.url, frame(0), KEY)
        assert ok.status_code == 200
        assert len(ok.json()["action"]) == 2 and ok.json()["source"] == "inferred"
        assert lab_style_request(server.url, frame(0), "not-the-key").status_code == 403
        assert httpx.get(f"{server.url}/model/info").status_code == 403
        assert httpx.post(f"{server.url}/reset").status_code == 403


def test_malformed_requests_get_4xx_and_the_server_keeps_answering():
    with serve(ImageStatsPolicy()) as server:
        headers = {"X-API-Key": KEY}
        bad = [
            {"image": "%%%", "instruction": LEFT},
            {"image": base64.b64encode(b"text").decode(), "instruction": LEFT},
            {"image": encode_image(frame(1)), "instruction": ""},
            {"instruction": LEFT},
            ["not", "an", "object"],
        ]
        for payload in bad:
            response = httpx.post(f"{server.url}/predict", json=payload, headers=headers, timeout=5)
            assert 400 <= response.status_code < 500, (payload, response.text)
            assert response.json()["detail"]
        raw = httpx.post(
            f"{server.url}/predict",
            content=b"\x00\x01garbage",
            headers={**headers, "Content-Type": "application/json"},
            timeout=5,
        )
        assert raw.status_code in (400, 422) and raw.json()["detail"]
        assert lab_style_request(server.url, frame(2), KEY).status_code == 200


def test_concurrent_requests_are_served_one_at_a_time_each_with_its_own_answer():
    policy = SlowPolicy(delay_s=0.01)
    images = [frame(i) for i in range(16)]
    answers: dict[int, list] = {}
    errors: list = []
    with serve(policy) as server:

        def robot(i: int) -> None:
            with VLAClient(server.url, api_key=KEY, timeout=10, action_dims=policy.action_dims) as client:
                for _ in range(2):
                    result = client.predict(images[i], LEFT)
                    if result.source != "inferred":
                        errors.append((i, result.source, result.error))
                    answers.setdefault(i, []).append(result.action)

        threads = [threading.Thread(target=robot, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert not errors
    assert policy.max_concurrent == 1 and policy.calls == 32
    reference = ImageStatsPolicy()
    for i, actions in answers.items():
        for action in actions:  # PNG is lossless: exactly the in-process answer for this robot's frame
            np.testing.assert_allclose(action, reference.act(images[i], LEFT), rtol=1e-6)


def test_the_client_is_a_control_policy_that_matches_the_policy_in_process():
    policy = ChunkPolicy(chunk_size=3, action_dims=("linear_x", "linear_y", "angular_z"))
    reference = ChunkPolicy(chunk_size=3, action_dims=("linear_x", "linear_y", "angular_z"))
    with serve(policy) as server, VLAClient(server.url, api_key=KEY, timeout=5) as client:
        assert client.action_dims == ("linear_x", "linear_y", "angular_z")  # from /model/info
        client.reset()
        assert policy.resets == 1
        for seed in range(3):
            image = frame(seed)
            np.testing.assert_allclose(client.act(image, LEFT), reference.act(image, LEFT), rtol=1e-6)
            assert client.last.source == "inferred" and not client.last.stopped
        chunked = VLAClient(server.url, api_key=KEY, timeout=5, strategy="chunk_reuse")
        sources = [chunked.predict(frame(0), LEFT).source for _ in range(4)]
        chunked.close()
        assert sources == ["inferred", "reused", "reused", "inferred"]


def test_a_client_timeout_means_stop_and_says_so(caplog):
    policy = SlowPolicy(delay_s=0.6)
    with serve(policy) as server:
        client = VLAClient(server.url, api_key=KEY, timeout=0.1, action_dims=("linear_x", "linear_y"))
        start = time.perf_counter()
        action = client.act(frame(0), LEFT)
        elapsed = time.perf_counter() - start
        client.close()
    assert elapsed < 0.5
    np.testing.assert_array_equal(action, [0.0, 0.0])
    assert client.last.source == "client_stop:timeout" and client.last.stopped
    assert "0.1 s" in client.last.error
    assert client.stats.stops == {"client_stop:timeout": 1}
    assert "client_stop:timeout" in caplog.text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_server_means_stop_not_a_crash():
    client = VLAClient(f"http://127.0.0.1:{_free_port()}", api_key=KEY, timeout=0.5)
    assert client.action_dims == ("linear_x", "linear_y")  # the fallback, with a warning
    action = client.act(frame(0), LEFT)
    np.testing.assert_array_equal(action, [0.0, 0.0])
    assert client.last.source == "client_stop:connection_error"
    client.reset()  # logs, does not raise
    client.close()


def test_a_wrong_key_and_a_server_safe_stop_both_stop_the_client():
    with serve(NaNPolicy()) as server:
        with VLAClient(server.url, api_key="wrong", timeout=5, action_dims=("linear_x", "linear_y")) as bad:
            np.testing.assert_array_equal(bad.act(frame(0), LEFT), [0.0, 0.0])
            assert bad.last.source == "client_stop:http_403"
            assert "invalid API key" in bad.last.error
        with VLAClient(server.url, api_key=KEY, timeout=5) as good:
            np.testing.assert_array_equal(good.act(frame(0), LEFT), [0.0, 0.0])
            assert good.last.source == "safe_stop:non_finite_output" and good.last.stopped


def test_insecure_server_on_loopback_needs_no_key():
    with (
        serve(ImageStatsPolicy(), api_key=None, insecure_no_auth=True) as server,
        VLAClient(server.url, timeout=5) as client,
    ):
        client.act(frame(0), LEFT)
        assert client.last.source == "inferred"


def test_client_repr_hides_the_key():
    client = VLAClient("http://127.0.0.1:1", api_key=KEY)
    assert KEY not in repr(client)
    client.close()
    with pytest.raises(ValueError, match="http"):
        VLAClient("127.0.0.1:8000")


def test_the_load_benchmark_runs_end_to_end_and_writes_its_report(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "serve_load.py"
    out = tmp_path / "serve_load.json"
    args = ["--requests", "4", "--repeats", "2", "--warmup", "1", "--concurrency", "1", "2"]
    args += ["--image-size", "48x64", "--max-seconds", "60", "--out", str(out)]
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert [level["concurrency"] for level in report["levels"]] == [1, 2]
    for level in report["levels"]:
        assert level["n_requests"] == 8 and level["errors"] == 0
        p50, p99 = level["latency_ms"]["p50"], level["latency_ms"]["p99"]
        assert 0 < p50["value"] <= p99["value"] and p50["ci95"][0] <= p50["value"] <= p50["ci95"][1]
        assert level["throughput_rps"]["n"] == 2 and level["throughput_rps"]["mean"] > 0
