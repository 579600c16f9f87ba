"""A short soak of the real server (the `benchmarks/serve_load.py --soak` benchmark, a few seconds long): robot
clients mixing valid and malformed requests against a model that raises on every 10th call."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from serve_load import MALFORMED, malform  # noqa: E402


@pytest.mark.parametrize("kind", MALFORMED)
def test_each_malformation_is_answered_4xx_by_the_app(kind):
    from fastapi.testclient import TestClient

    from mobile_vla.serving import ServerConfig, create_app
    from mobile_vla.serving.protocol import encode_image
    from mobile_vla.serving.testing import ImageStatsPolicy

    app = create_app(ImageStatsPolicy(), {"model_name": "stats"}, ServerConfig(api_key="k"))
    image = encode_image(np.full((24, 32, 3), 128, np.uint8), "jpeg")
    body = json.dumps({"image": image, "instruction": "go left"}).encode()
    with TestClient(app) as client:
        headers = {"X-API-Key": "k", "Content-Type": "application/json"}
        assert client.post("/predict", content=body, headers=headers).status_code == 200
        response = client.post("/predict", content=malform(body, kind), headers=headers)
    assert 400 <= response.status_code < 500, (kind, response.status_code, response.text[:200])
    assert response.json()["detail"]


def test_a_short_soak_has_no_crash_no_non_finite_action_and_every_failure_answered_zero(tmp_path):
    out = tmp_path / "serve_load.json"
    out.write_text(json.dumps({"levels": ["kept"]}))
    command = [sys.executable, str(ROOT / "benchmarks" / "serve_load.py"), "--soak", "6", "--clients", "4"]
    command += ["--image-size", "120x160", "--timeout-s", "20", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    document = json.loads(out.read_text())
    assert document["levels"] == ["kept"]  # the load benchmark's numbers stay beside the soak's
    soak = document["soak"]
    assert soak["crashes"] == 0 and soak["server_alive_at_end"] and soak["server_exit_code"] == 0
    assert soak["non_finite_actions"] == 0 and soak["violations"] == 0, soak["violation_examples"]
    assert soak["failures"] == soak["failures_answered_zero"] > 0
    assert soak["connection_errors_or_timeouts"] == 0
    model_errors = soak["outcomes"].get("safe_stop:model_error", 0)
    inferred = soak["outcomes"]["inferred"]
    # every 10th model call raises (the malformed requests never reach the model)
    assert model_errors == (inferred + model_errors) // 10 == soak["server_logged_model_errors"]
    assert soak["server_stats"]["safe_stops"].get("model_error", 0) == model_errors
    assert sum(n for k, n in soak["by_kind"].items() if k != "valid") > 0
    assert soak["latency_ms"]["all"]["p99"]["value"] > 0
