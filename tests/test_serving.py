"""The inference server through FastAPI's TestClient: access, bad input, safety, strategies, serialisation."""

import base64
import io
import logging
import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from mobile_vla.serving import auth
from mobile_vla.serving.app import ServerConfig, create_app
from mobile_vla.serving.auth import AuthConfigError, check_access_config
from mobile_vla.serving.protocol import InputLimits, decode_image, encode_image
from mobile_vla.serving.runner import PolicyRunner
from mobile_vla.serving.safety import VelocityLimits, check_action
from mobile_vla.serving.testing import (
    ChunkPolicy,
    ConstantPolicy,
    ImageStatsPolicy,
    NaNPolicy,
    RaisingPolicy,
    SlowPolicy,
)

KEY = "test-key-7f3a9c2e51b84d06"
HEADERS = {"X-API-Key": KEY}
LEFT = "Navigate around obstacles and reach the front of the beverage bottle on the left"


def frame(seed: int = 0, height: int = 48, width: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def body(image: np.ndarray | None = None, instruction: str = LEFT, **extra) -> dict:
    return {"image": encode_image(frame() if image is None else image), "instruction": instruction, **extra}


def make_client(policy=None, **config) -> TestClient:
    config.setdefault("api_key", KEY)
    app = create_app(policy or ImageStatsPolicy(), {"model_name": "fake-case1"}, ServerConfig(**config))
    return TestClient(app)


# --- access ----------------------------------------------------------------------------------------------------


def test_health_needs_no_key_and_reports_the_model():
    response = make_client().get("/health")
    assert response.status_code == 200
    assert response.json() == {
        "status": "healthy",
        "model_loaded": True,
        "model_name": "fake-case1",
        "device": "cpu",
    }


ENDPOINTS = [("GET", "/model/info"), ("POST", "/predict"), ("POST", "/reset"), ("GET", "/not-a-route")]


@pytest.mark.parametrize("method,path", ENDPOINTS)
@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}, {"X-API-Key": KEY[:-1]}, {"X-API-Key": ""}])
def test_every_endpoint_but_health_refuses_a_missing_or_wrong_key(method, path, headers):
    policy = ImageStatsPolicy()
    client = make_client(policy)
    response = client.request(method, path, headers=headers, json=body())
    assert response.status_code == 403
    assert "key" in response.json()["detail"].lower()
    assert policy.calls == 0 and policy.resets == 0


@pytest.mark.parametrize("method,path", ENDPOINTS[:3])
def test_the_right_key_is_let_through(method, path):
    response = make_client().request(method, path, headers=HEADERS, json=body())
    assert response.status_code == 200


def test_key_is_compared_in_constant_time(monkeypatch):
    calls = []
    real = auth.hmac.compare_digest
    monkeypatch.setattr(auth.hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    make_client().get("/model/info", headers={"X-API-Key": "guess"})
    assert calls == [(b"guess", KEY.encode())]


def test_the_key_never_appears_in_logs_or_reprs(caplog):
    caplog.set_level(logging.DEBUG)
    config = ServerConfig(api_key=KEY)
    client = TestClient(create_app(NaNPolicy(), {"model_name": "m"}, config))
    client.get("/model/info", headers=HEADERS)
    client.post("/predict", headers=HEADERS, json=body())  # a safe stop: logged at error level
    client.post("/predict", headers={"X-API-Key": KEY[:-2] + "xx"}, json=body())  # a near miss
    client.post("/reset", headers=HEADERS)
    assert "refused POST /predict" in caplog.text  # the refusal is logged...
    assert KEY not in caplog.text and KEY[:-2] not in caplog.text  # ...without the key or the guess
    assert KEY not in repr(config)


def test_the_app_refuses_to_start_without_a_key_unless_told_to():
    with pytest.raises(AuthConfigError, match="VLA_API_KEY"):
        ServerConfig()
    client = TestClient(create_app(ImageStatsPolicy(), {}, ServerConfig(insecure_no_auth=True)))
    assert client.post("/predict", json=body()).status_code == 200


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_insecure_no_auth_is_allowed_on_loopback(host):
    check_access_config(None, True, host)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.0.10", "::", "robot.local"])
def test_insecure_no_auth_refuses_other_addresses(host):
    with pytest.raises(AuthConfigError, match="loopback"):
        check_access_config(None, True, host)


def test_no_key_and_no_insecure_flag_is_refused():
    with pytest.raises(AuthConfigError, match="no API key"):
        check_access_config(None, False, "127.0.0.1")


def test_api_key_file_wins_and_is_stripped(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text(f"  {KEY}\n")
    key_file.chmod(0o600)
    assert auth.load_api_key(key_file, env={"VLA_API_KEY": "from-env"}) == KEY
    assert auth.load_api_key(None, env={"VLA_API_KEY": "from-env-0123456789"}) == "from-env-0123456789"
    assert auth.load_api_key(None, env={}) is None
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(AuthConfigError, match="empty"):
        auth.load_api_key(tmp_path / "empty", env={})
    with pytest.raises(AuthConfigError, match="cannot read"):
        auth.load_api_key(tmp_path / "missing", env={})


# --- predict ---------------------------------------------------------------------------------------------------


def test_predict_answers_with_the_policy_action_for_that_frame():
    policy = ImageStatsPolicy()
    image = frame(3)
    response = make_client(policy).post("/predict", headers=HEADERS, json=body(image))
    assert response.status_code == 200
    payload = response.json()
    np.testing.assert_allclose(payload["action"], ImageStatsPolicy().act(image, LEFT), rtol=1e-6)
    assert payload["source"] == "inferred"
    assert payload["strategy"] == "receding_horizon"
    assert payload["model_name"] == "fake-case1"
    assert payload["latency_ms"] > 0
    assert payload["clamped"] is False
    assert set(payload["buffer_status"]) == {"chunk_size", "executed", "remaining"}


def test_jpeg_and_data_urls_are_accepted():
    client = make_client()
    jpeg = encode_image(frame(), "jpeg")
    for image in (jpeg, "data:image/jpeg;base64," + jpeg):
        response = client.post("/predict", headers=HEADERS, json={"image": image, "instruction": LEFT})
        assert response.status_code == 200, response.text


def test_extra_request_keys_are_ignored():
    response = make_client().post("/predict", headers=HEADERS, json=body(timestamp=123.4, frame_id=7))
    assert response.status_code == 200


def test_model_info_reports_model_and_limits():
    metadata = {
        "model_name": "case1@prod",
        "case": "case1",
        "model_class": "Simplified2DActionModelV2",
        "backbone": {"profile": "kosmos2", "fingerprint_hash": "abc123"},
        "trainable_parameters": 1234,
        "registry_run_id": "run-42",
    }
    config = ServerConfig(api_key=KEY, velocity_limits=VelocityLimits(max_linear=0.8))
    client = TestClient(create_app(ImageStatsPolicy(), metadata, config))
    info = client.get("/model/info", headers=HEADERS).json()
    assert {k: info[k] for k in metadata} == metadata
    assert info["action_dim"] == 2 and info["action_names"] == ["linear_x", "linear_y"]
    assert info["velocity_limits"] == {"linear_x": 0.8, "linear_y": 0.8}
    assert info["strategies"] == ["receding_horizon"] and info["supports_chunks"] is False


# --- bad input: a 4xx with a message, and the server keeps serving --------------------------------------------


def _png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _gif() -> str:
    buffer = io.BytesIO()
    Image.fromarray(frame()).save(buffer, format="GIF")
    return _b64(buffer.getvalue())


BAD_REQUESTS = {
    "invalid_base64": ({"image": "not base64 at all!", "instruction": LEFT}, 400, "base64"),
    "empty_image": ({"image": "", "instruction": LEFT}, 400, "empty"),
    "not_an_image": ({"image": _b64(b"GIF? no, just some text bytes"), "instruction": LEFT}, 400, "image"),
    "truncated_png": ({"image": _b64(_png_bytes(frame())[:200]), "instruction": LEFT}, 400, "corrupt"),
    "gif_format": ({"image": _gif(), "instruction": LEFT}, 415, "JPEG or PNG"),
    "too_many_pixels_a_side": ({"image": encode_image(frame(0, 40, 200)), "instruction": LEFT}, 413, "px"),
    "empty_instruction": ({"image": encode_image(frame()), "instruction": "   "}, 422, "instruction"),
    "long_instruction": ({"image": encode_image(frame()), "instruction": "go " * 100}, 422, "instruction"),
    "missing_image": ({"instruction": LEFT}, 422, "image"),
    "missing_instruction": ({"image": encode_image(frame())}, 422, "instruction"),
    "image_not_a_string": ({"image": 12345, "instruction": LEFT}, 422, "image"),
    "instruction_not_a_string": ({"image": encode_image(frame()), "instruction": ["go"]}, 422, "instruction"),
    "unknown_strategy": (
        {"image": encode_image(frame()), "instruction": LEFT, "strategy": "yolo"},
        422,
        "strategy",
    ),
    "a_list_not_an_object": ([1, 2, 3], 422, "JSON"),
}


@pytest.mark.parametrize("name", sorted(BAD_REQUESTS))
def test_bad_input_gets_a_4xx_with_a_message_and_the_server_keeps_serving(name):
    payload, status, phrase = BAD_REQUESTS[name]
    policy = ImageStatsPolicy()
    client = make_client(policy, input_limits=InputLimits(max_image_side=128, max_instruction_chars=200))
    response = client.post("/predict", headers=HEADERS, json=payload)
    assert response.status_code == status, response.text
    assert phrase.lower() in response.json()["detail"].lower()
    assert policy.calls == 0
    assert client.post("/predict", headers=HEADERS, json=body()).status_code == 200


def test_body_that_is_not_json_gets_422():
    response = make_client().post(
        "/predict", headers={**HEADERS, "Content-Type": "application/json"}, content=b"{not json"
    )
    assert response.status_code == 422
    assert "JSON" in response.json()["detail"]


def test_image_over_the_byte_limit_gets_413():
    limits = InputLimits(max_image_bytes=2000)
    image = frame(0, 64, 64)  # random pixels: a PNG of ~12 KB
    client = make_client(input_limits=limits)
    response = client.post("/predict", headers=HEADERS, json=body(image))
    assert response.status_code == 413
    assert "2000 bytes" in response.json()["detail"]
    assert decode_image(encode_image(frame(0, 8, 8)), limits).shape == (8, 8, 3)


def test_request_body_over_the_limit_is_refused_before_parsing():
    client = make_client(input_limits=InputLimits(max_image_bytes=1000))
    huge = b'{"image": "' + b"A" * 200_000 + b'", "instruction": "x"}'
    response = client.post("/predict", headers={**HEADERS, "Content-Type": "application/json"}, content=huge)
    assert response.status_code == 413


def test_a_chunked_body_over_the_limit_is_cut_off_while_streaming():
    client = make_client(input_limits=InputLimits(max_image_bytes=1000))

    def chunks():  # no content-length: the server must count as it reads
        yield b'{"image": "'
        for _ in range(50):
            yield b"A" * 4096
        yield b'", "instruction": "x"}'

    headers = {**HEADERS, "Content-Type": "application/json"}
    response = client.post("/predict", headers=headers, content=chunks())
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert response.status_code == 413


def test_default_limits_are_10_mb_and_4096_px():
    limits = InputLimits()
    assert limits.max_image_bytes == 10 * 1024 * 1024 and limits.max_image_side == 4096
    with pytest.raises(ValueError, match="max_image_side"):
        InputLimits(max_image_side=0)


# --- safety: non-finite output, model errors, clamping ---------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_output_is_a_logged_safe_stop(bad, caplog):
    client = make_client(ConstantPolicy([0.5, bad]))
    response = client.post("/predict", headers=HEADERS, json=body())
    assert response.status_code == 200
    payload = response.json()
    assert payload["action"] == [0.0, 0.0]
    assert payload["source"] == "safe_stop:non_finite_output"
    assert "non_finite_output" in caplog.text


def test_model_error_is_a_logged_safe_stop_and_the_server_keeps_serving(caplog):
    client = make_client(RaisingPolicy())
    for _ in range(2):
        payload = client.post("/predict", headers=HEADERS, json=body()).json()
        assert payload["action"] == [0.0, 0.0]
        assert payload["source"] == "safe_stop:model_error"
    assert "illegal memory access" in caplog.text  # the traceback is in the log, for the operator
    stats = client.get("/model/info", headers=HEADERS).json()["stats"]
    assert stats["safe_stops"] == {"model_error": 2}


@pytest.mark.parametrize("output", [[0.1, 0.2, 0.3], [[0.1], [0.2]], "fast", None])
def test_output_of_the_wrong_shape_is_a_safe_stop(output):
    policy = ConstantPolicy([0.0, 0.0])
    policy.act = lambda image, instruction: output
    payload = make_client(policy).post("/predict", headers=HEADERS, json=body()).json()
    assert payload["action"] == [0.0, 0.0]
    assert payload["source"] == "safe_stop:bad_output_shape"


def test_actions_are_clamped_to_the_velocity_limits():
    policy = ConstantPolicy([3.0, -2.0, 0.5], action_dims=("linear_x", "linear_y", "angular_z"))
    limits = VelocityLimits(max_linear=1.0, max_angular=0.3)
    payload = (
        make_client(policy, velocity_limits=limits).post("/predict", headers=HEADERS, json=body()).json()
    )
    assert payload["action"] == pytest.approx([1.0, -1.0, 0.3])
    assert payload["clamped"] is True
    assert payload["source"] == "inferred"


def test_actions_within_limits_are_untouched():
    checked = check_action([0.1, -1.15], np.array([1.15, 1.15]))
    assert checked.clamped is False
    np.testing.assert_allclose(checked.action, [0.1, -1.15], rtol=1e-6)


def test_per_axis_limit_wins_and_unknown_axes_need_one():
    limits = VelocityLimits(max_linear=1.0, per_axis={"linear_y": 0.2})
    assert limits.as_dict(("linear_x", "linear_y")) == {"linear_x": 1.0, "linear_y": 0.2}
    with pytest.raises(ValueError, match="wheel_speed"):
        create_app(ConstantPolicy([0.0], action_dims=("wheel_speed",)), {}, ServerConfig(api_key=KEY))
    with pytest.raises(ValueError, match="max_linear"):
        VelocityLimits(max_linear=float("nan"))


# --- strategies ------------------------------------------------------------------------------------------------


def test_chunk_reuse_executes_the_stored_chunk_before_inferring_again():
    policy = ChunkPolicy(chunk_size=3, step=0.01)
    client = make_client(policy)
    image = frame(1)
    chunk = ChunkPolicy(chunk_size=3, step=0.01).act_chunk(image, LEFT)  # (3, 2)
    answers = [
        client.post("/predict", headers=HEADERS, json=body(image, strategy="chunk_reuse")).json()
        for _ in range(7)
    ]
    assert [a["source"] for a in answers] == ["inferred", "reused", "reused"] * 2 + ["inferred"]
    assert policy.chunk_calls == 3
    for i, answer in enumerate(answers):
        np.testing.assert_allclose(answer["action"], chunk[i % 3], rtol=1e-6)
    assert [a["buffer_status"]["remaining"] for a in answers[:3]] == [2, 1, 0]


def test_chunk_steps_limits_how_much_of_a_chunk_is_executed():
    policy = ChunkPolicy(chunk_size=5)
    client = make_client(policy, chunk_steps=2)
    sources = [
        client.post("/predict", headers=HEADERS, json=body(strategy="chunk_reuse")).json()["source"]
        for _ in range(4)
    ]
    assert sources == ["inferred", "reused", "inferred", "reused"]


def test_a_new_instruction_discards_the_stored_chunk():
    policy = ChunkPolicy(chunk_size=4)
    client = make_client(policy)
    client.post("/predict", headers=HEADERS, json=body(strategy="chunk_reuse"))
    answer = client.post(
        "/predict",
        headers=HEADERS,
        json=body(instruction="reach the bottle on the right", strategy="chunk_reuse"),
    ).json()
    assert answer["source"] == "inferred" and policy.chunk_calls == 2


def test_reset_clears_the_chunk_and_the_policy_history():
    policy = ChunkPolicy(chunk_size=4)
    client = make_client(policy)
    client.post("/predict", headers=HEADERS, json=body(strategy="chunk_reuse"))
    response = client.post("/reset", headers=HEADERS)
    assert response.status_code == 200
    assert response.json()["buffer_status"] == {"chunk_size": 0, "executed": 0, "remaining": 0}
    assert policy.resets == 1
    answer = client.post("/predict", headers=HEADERS, json=body(strategy="chunk_reuse")).json()
    assert answer["source"] == "inferred" and policy.chunk_calls == 2


def test_receding_horizon_infers_every_call_and_drops_a_stored_chunk():
    policy = ChunkPolicy(chunk_size=4)
    client = make_client(policy)
    client.post("/predict", headers=HEADERS, json=body(strategy="chunk_reuse"))
    for _ in range(3):
        answer = client.post("/predict", headers=HEADERS, json=body(strategy="receding_horizon")).json()
        assert answer["source"] == "inferred" and answer["buffer_status"]["chunk_size"] == 0
    assert policy.calls == 1 + 3  # act_chunk calls act once, then three act calls


def test_chunk_reuse_on_a_model_without_chunks_gets_422():
    response = make_client().post("/predict", headers=HEADERS, json=body(strategy="chunk_reuse"))
    assert response.status_code == 422
    assert "receding_horizon" in response.json()["detail"]


def test_default_strategy_applies_when_the_request_names_none():
    client = make_client(ChunkPolicy(chunk_size=2), default_strategy="chunk_reuse")
    sources = [client.post("/predict", headers=HEADERS, json=body()).json()["source"] for _ in range(2)]
    assert sources == ["inferred", "reused"]
    with pytest.raises(ValueError, match="act_chunk"):
        create_app(ImageStatsPolicy(), {}, ServerConfig(api_key=KEY, default_strategy="chunk_reuse"))


def test_a_non_finite_chunk_is_a_safe_stop_and_is_not_stored():
    policy = ChunkPolicy(chunk_size=3)
    policy.act_chunk = lambda image, instruction: np.array([[0.1, 0.1], [np.nan, 0.1], [0.1, 0.1]])
    client = make_client(policy)
    for _ in range(2):
        answer = client.post("/predict", headers=HEADERS, json=body(strategy="chunk_reuse")).json()
        assert answer["source"] == "safe_stop:non_finite_output" and answer["action"] == [0.0, 0.0]
        assert answer["buffer_status"]["chunk_size"] == 0


def test_chunk_steps_are_clamped_one_by_one():
    policy = ChunkPolicy(chunk_size=2)
    policy.act_chunk = lambda image, instruction: np.array([[0.5, 0.5], [5.0, 0.5]])
    client = make_client(policy)
    first, second = (
        client.post("/predict", headers=HEADERS, json=body(strategy="chunk_reuse")).json() for _ in range(2)
    )
    assert first["clamped"] is False and second["clamped"] is True
    assert second["action"] == pytest.approx([1.15, 0.5])


# --- serialisation ---------------------------------------------------------------------------------------------


def test_the_model_is_never_called_from_two_threads_at_once():
    policy = SlowPolicy(delay_s=0.005)
    runner = PolicyRunner(policy, VelocityLimits())
    images = [frame(i, 8, 8) for i in range(8)]
    results: dict[int, np.ndarray] = {}

    def worker(i: int) -> None:
        for _ in range(3):
            results[i] = runner.step(images[i], LEFT, "receding_horizon").action

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert policy.max_concurrent == 1
    assert policy.calls == 24 and runner.stats.requests == 24
    for i, action in results.items():
        np.testing.assert_allclose(action, ImageStatsPolicy().act(images[i], LEFT), rtol=1e-6)


def test_a_request_that_waits_too_long_for_the_model_gets_503():
    client = make_client(queue_timeout_s=0.05)
    runner = client.app.state.runner
    with runner.lock:  # another request is "inside the model"
        response = client.post("/predict", headers=HEADERS, json=body())
    assert response.status_code == 503
    assert "busy" in response.json()["detail"]
    assert client.post("/predict", headers=HEADERS, json=body()).status_code == 200
