"""Load test of the inference server: p50/p95/p99 latency and throughput at 1, 4 and 16 concurrent clients.

    python benchmarks/serve_load.py                         # fake policy: the server's own overhead
    python benchmarks/serve_load.py --policy cpu-work       # plus a fixed CPU cost per step (resize + matmul)
    python benchmarks/serve_load.py --run-dir runs/lite     # a trained run (mobile_vla.policies.load_policy)
    python benchmarks/serve_load.py --soak 120              # faults: 16 robot clients for 2 minutes (below)

Soak (``--soak SECONDS``): ``--clients`` threads (default 16), each the robot's own client
(``mobile_vla.serving.client.VLAClient``), send requests until the time is up; a ``--malformed-share`` of them
(default 0.3) is mangled on the wire (truncated JSON, bad base64, bytes that are no image, a truncated JPEG, a
missing image, a number for the instruction, an empty instruction, an unknown strategy), and the server's
model raises on every ``--fail-every``-th call (default 10; ``FlakyPolicy``). Counted: server crashes,
non-finite actions, failures answered with anything but zero velocity, answers of the wrong kind (a
malformed request answered 200, a valid one refused), and latency percentiles per request kind. The result
goes under ``"soak"`` in ``serve_load.json`` (the load levels in the same file are kept, and vice versa).

It starts a real uvicorn on 127.0.0.1 in a child process (so the load generator does not share the server's
GIL), sends the robot's request (a 720x1280 JPEG frame, base64 in JSON, X-API-Key) from N client threads,
each with its own keep-alive connection, and writes ``benchmarks/results/serve_load.json``. Every loop is
bounded (a fixed number of requests per level and repeat, a per-request timeout, an overall deadline), so it
stops by itself.

Reported per level: client-side round-trip latency percentiles with bootstrap 95% intervals (n = requests),
the server's own ``latency_ms`` percentiles, and throughput (requests/s) as the mean over repeats with a
t-based 95% interval (n = repeats).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import logging
import math
import os
import platform
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "serve_load.json"
INSTRUCTION = "Navigate around obstacles and reach the front of the beverage bottle on the left"
# two-sided 95% t quantiles by degrees of freedom (scipy is not a dependency)
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


# --- the server side (child process) ---------------------------------------------------------------------------


def build_policy(args: argparse.Namespace):
    if args.run_dir:
        from mobile_vla.serving.loading import load_for_serving

        return load_for_serving(args.run_dir, device=args.device)
    from mobile_vla.serving import testing

    if args.policy == "cpu-work":
        return testing.CPUWorkPolicy(), {"model_name": "cpu-work (fake: resize to 224 + matmul)"}
    if args.policy == "flaky":
        return testing.FlakyPolicy(every=args.fail_every, stride=16), {
            "model_name": f"flaky (image statistics; raises on every {args.fail_every}th call)"
        }
    return testing.ImageStatsPolicy(stride=16), {
        "model_name": "fake (image statistics on 1/256 of the pixels)"
    }


def serve_child(args: argparse.Namespace) -> int:
    from mobile_vla.serving.app import ServerConfig, create_app
    from mobile_vla.serving.server import run_server

    policy, metadata = build_policy(args)
    config = ServerConfig(api_key=os.environ["VLA_API_KEY"], queue_timeout_s=args.timeout_s)
    run_server(create_app(policy, metadata, config), host="127.0.0.1", port=args.port, log_level="warning")
    return 0


# --- the load generator ----------------------------------------------------------------------------------------


def robot_frame(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A camera-like frame (floor, wall, two boxes, a bottle, sensor noise): JPEG-compresses like a real one."""
    rng = np.random.default_rng(seed)
    img = np.zeros((height, width, 3), np.float32)
    horizon = height // 2
    img[:horizon] = np.linspace(200, 160, horizon)[:, None, None] * np.array([0.95, 0.97, 1.0])
    img[horizon:] = np.linspace(110, 150, height - horizon)[:, None, None] * np.array([1.0, 0.9, 0.8])
    for x0, w in ((0.30, 0.18), (0.55, 0.14)):
        x, bw = int(x0 * width), int(w * width)
        img[horizon - height // 10 : horizon + height // 6, x : x + bw] = (160, 120, 70)
    bx = int(0.2 * width)
    img[horizon - height // 8 : horizon + height // 20, bx : bx + width // 40] = (60, 160, 90)
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def encode_jpeg(image: np.ndarray, quality: int = 85) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def percentile_ci(values: np.ndarray, q: float, n_boot: int = 1000, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    boot = np.percentile(rng.choice(values, (n_boot, len(values)), replace=True), q, axis=1)
    return {
        "value": float(np.percentile(values, q)),
        "ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
    }


def mean_ci(values: list[float]) -> dict:
    arr = np.asarray(values, dtype=np.float64)
    mean = float(arr.mean())
    if len(arr) < 2:
        return {"mean": mean, "ci95": None, "n": len(arr)}
    half = T95.get(len(arr) - 1, 1.96) * float(arr.std(ddof=1)) / math.sqrt(len(arr))
    return {"mean": mean, "ci95": [mean - half, mean + half], "n": len(arr)}


def run_level(
    url: str, key: str, body: bytes, concurrency: int, requests: int, timeout_s: float, deadline: float, bar
):
    """One burst: ``requests`` requests over ``concurrency`` threads -> (latencies, server, decode, errors, wall)."""
    import httpx

    per_client = [requests // concurrency + (i < requests % concurrency) for i in range(concurrency)]
    latencies: list[float] = []
    server_ms: list[float] = []
    decode_ms: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    headers = {"X-API-Key": key, "Content-Type": "application/json"}
    barrier = threading.Barrier(concurrency)

    def client(n: int) -> None:
        with httpx.Client(base_url=url, timeout=timeout_s, headers=headers) as http:
            http.get("/health")  # open the keep-alive connection before the clock starts
            barrier.wait(timeout=30)
            for _ in range(n):
                if time.monotonic() > deadline:
                    return
                start = time.perf_counter()
                try:
                    response = http.post("/predict", content=body)
                    elapsed = (time.perf_counter() - start) * 1000.0
                    ok = response.status_code == 200
                    payload = response.json() if ok else None
                except Exception as exc:
                    with lock:
                        errors.append(type(exc).__name__)
                    bar.update(1)
                    continue
                with lock:
                    if ok and payload["source"] == "inferred":
                        latencies.append(elapsed)
                        server_ms.append(float(payload["latency_ms"]))
                        decode_ms.append(float(payload["timings_ms"]["decode"]))
                    else:
                        errors.append(f"http_{response.status_code}" if not ok else payload["source"])
                bar.update(1)

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in per_client]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(deadline - time.monotonic(), 0) + timeout_s)
    wall = time.perf_counter() - start
    return latencies, server_ms, decode_ms, errors, wall


# --- the soak ----------------------------------------------------------------------------------------------

MALFORMED = (
    "not_json",
    "bad_base64",
    "not_an_image",
    "truncated_jpeg",
    "missing_image",
    "instruction_not_a_string",
    "empty_instruction",
    "unknown_strategy",
)


def malform(body: bytes, kind: str) -> bytes:
    """A /predict request body broken in one way (``kind`` in ``MALFORMED``)."""
    if kind == "not_json":
        return body[: len(body) // 3]
    request = json.loads(body)
    if kind == "bad_base64":
        request["image"] = "%%% this is not base64 %%%"
    elif kind == "not_an_image":
        request["image"] = base64.b64encode(b"hello, these bytes are no JPEG").decode()
    elif kind == "truncated_jpeg":
        data = base64.b64decode(request["image"])
        request["image"] = base64.b64encode(data[: len(data) // 4]).decode()
    elif kind == "missing_image":
        del request["image"]
    elif kind == "instruction_not_a_string":
        request["instruction"] = 12345
    elif kind == "empty_instruction":
        request["instruction"] = "   "
    elif kind == "unknown_strategy":
        request["strategy"] = "teleport"
    else:
        raise ValueError(f"unknown malformation {kind!r}")
    return json.dumps(request).encode()


def _malforming_transport():
    """An httpx transport that breaks the next /predict body when told to (``transport.next = kind``)."""
    import httpx

    class MalformingTransport(httpx.BaseTransport):
        def __init__(self) -> None:
            self.inner = httpx.HTTPTransport()
            self.next: str | None = None

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            kind, self.next = self.next, None
            if kind is not None and request.url.path.endswith("/predict"):
                headers = [(k, v) for k, v in request.headers.raw if k.lower() != b"content-length"]
                request = httpx.Request(
                    request.method, request.url, headers=headers, content=malform(request.read(), kind)
                )
            return self.inner.handle_request(request)

        def close(self) -> None:
            self.inner.close()

    return MalformingTransport()


def soak(
    url: str,
    key: str,
    process: subprocess.Popen,
    *,
    seconds: float,
    clients: int,
    malformed_share: float,
    frames: list[np.ndarray],
    timeout_s: float,
    seed: int = 0,
) -> dict:
    """``clients`` robot clients for ``seconds``; returns counts, violations and latencies (see the docstring)."""
    from mobile_vla.serving.client import VLAClient
    from mobile_vla.serving.safety import MODEL_ERROR

    # Each failure is a warning of the robot client's: thousands of them in a soak; the counts say it all.
    logging.getLogger("mobile_vla.serving.client").setLevel(logging.ERROR)

    records: list[tuple[str, str, float, bool, bool]] = []  # kind, source, latency ms, finite, zero
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds
    barrier = threading.Barrier(clients)

    def client(index: int) -> None:
        rng = np.random.default_rng([seed, index])
        transport = _malforming_transport()
        robot = VLAClient(url, api_key=key, timeout=timeout_s, image_format="jpeg", transport=transport)
        robot.action_dims  # noqa: B018 (reads /model/info once, before the clock starts)
        barrier.wait(timeout=60)
        mine = []
        while time.monotonic() < stop_at:
            kind = "valid"
            if rng.random() < malformed_share:
                kind = str(rng.choice(MALFORMED))
                transport.next = kind
            result = robot.predict(frames[int(rng.integers(len(frames)))], INSTRUCTION)
            action = np.asarray(result.action)
            mine.append(
                (
                    kind,
                    result.source,
                    result.latency_ms,
                    bool(np.all(np.isfinite(action))),
                    bool(np.all(action == 0.0)),
                )
            )
        with lock:
            records.extend(mine)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 2 * timeout_s + 60)
    wall = time.perf_counter() - start
    alive = process.poll() is None

    outcomes: dict[str, int] = {}
    by_kind: dict[str, int] = {}
    violations: list[str] = []
    failures = failures_zero = 0
    for kind, source, _, finite, zero in records:
        outcomes[source] = outcomes.get(source, 0) + 1
        by_kind[kind] = by_kind.get(kind, 0) + 1
        failed = source != "inferred"
        failures += failed
        failures_zero += failed and zero
        if not finite:
            violations.append(f"non-finite action ({kind}, {source})")
        if failed and not zero:
            violations.append(f"a failure not answered with zero velocity ({kind}, {source})")
        if kind == "valid" and source not in ("inferred", f"safe_stop:{MODEL_ERROR}"):
            violations.append(f"a valid request answered {source}")
        if kind != "valid" and not source.startswith("client_stop:http_4"):
            violations.append(f"a malformed request ({kind}) answered {source}")
    latency = {}
    for name, keep in (
        ("all", lambda k, s: True),
        ("inferred", lambda k, s: s == "inferred"),
        ("model_error", lambda k, s: s.startswith("safe_stop:")),
        ("malformed", lambda k, s: k != "valid"),
    ):
        values = np.asarray([r[2] for r in records if keep(r[0], r[1])])
        if len(values):
            latency[name] = {"n": len(values), **{f"p{q}": percentile_ci(values, q) for q in (50, 95, 99)}}
    connection = sum(
        n for s, n in outcomes.items() if s in ("client_stop:connection_error", "client_stop:timeout")
    )
    return {
        "seconds": seconds,
        "wall_s": wall,
        "clients": clients,
        "malformed_share": malformed_share,
        "requests": len(records),
        "by_kind": dict(sorted(by_kind.items())),
        "outcomes": dict(sorted(outcomes.items())),
        "server_alive_at_end": alive,
        "crashes": int(not alive),
        "connection_errors_or_timeouts": connection,
        "non_finite_actions": sum(not r[3] for r in records),
        "failures": failures,
        "failures_answered_zero": failures_zero,
        "violations": len(violations),
        "violation_examples": sorted(set(violations))[:10],
        "latency_ms": latency,
    }


def wait_for_health(url: str, process: subprocess.Popen, timeout_s: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server process exited with code {process.returncode} before answering")
        try:
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the server did not answer /health within {timeout_s} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--policy",
        choices=("fake", "cpu-work", "flaky"),
        default=None,
        help="stand-in policy (default fake; flaky for --soak)",
    )
    p.add_argument("--soak", type=float, default=None, metavar="SECONDS", help="run the soak for SECONDS")
    p.add_argument("--clients", type=int, default=16, help="soak: concurrent robot clients (default 16)")
    p.add_argument("--malformed-share", type=float, default=0.3, help="soak: share of malformed requests")
    p.add_argument("--fail-every", type=int, default=10, help="flaky policy: every N-th model call raises")
    p.add_argument("--seed", type=int, default=0, help="soak: seed of the request mix")
    p.add_argument("--run-dir", help="serve this trained run (or models:/NAME@ALIAS) instead of a stand-in")
    p.add_argument("--device", default="auto")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--requests", type=int, default=100, help="requests per level and repeat (default 100)")
    p.add_argument(
        "--repeats", type=int, default=5, help="bursts per level, for the throughput interval (default 5)"
    )
    p.add_argument("--warmup", type=int, default=10, help="requests before measuring")
    p.add_argument("--image-size", default="720x1280", help="HxW of the JPEG frame (default: the robot's)")
    p.add_argument("--timeout-s", type=float, default=30.0, help="per request")
    p.add_argument("--max-seconds", type=float, default=600.0, help="overall deadline")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--serve-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.policy is None:
        args.policy = "flaky" if args.soak else "fake"
    if args.serve_child:
        return serve_child(args)

    from tqdm import tqdm

    height, width = (int(v) for v in args.image_size.lower().split("x"))
    image_b64 = encode_jpeg(robot_frame(height, width))
    body = json.dumps({"image": image_b64, "instruction": INSTRUCTION}).encode()
    load_at_start = [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None
    key = secrets.token_urlsafe(24)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    child_args = [sys.executable, __file__, "--serve-child", "--port", str(port), "--policy", args.policy]
    child_args += [
        "--device",
        args.device,
        "--timeout-s",
        str(args.timeout_s),
        "--fail-every",
        str(args.fail_every),
    ]
    if args.run_dir:
        child_args += ["--run-dir", args.run_dir]
    env = {
        **os.environ,
        "VLA_API_KEY": key,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    server_log = None
    if args.soak:  # its server logs a traceback per model failure: into a file, counted afterwards
        server_log = tempfile.NamedTemporaryFile("w+", prefix="serve_soak_", suffix=".log")  # noqa: SIM115
    process = subprocess.Popen(child_args, env=env, stderr=server_log)
    deadline = time.monotonic() + args.max_seconds
    levels = []
    soak_result = None
    try:
        wait_for_health(url, process, timeout_s=min(300.0, args.max_seconds))
        import httpx

        info = httpx.get(f"{url}/model/info", headers={"X-API-Key": key}, timeout=10).json()
        if args.soak:
            frames = [robot_frame(height, width, seed=i) for i in range(4)]
            soak_result = soak(
                url,
                key,
                process,
                seconds=args.soak,
                clients=args.clients,
                malformed_share=args.malformed_share,
                frames=frames,
                timeout_s=args.timeout_s,
                seed=args.seed,
            )
            health = httpx.get(f"{url}/health", timeout=10)
            soak_result["health_after"] = health.status_code
            stats = httpx.get(f"{url}/model/info", headers={"X-API-Key": key}, timeout=10).json()["stats"]
            soak_result["server_stats"] = stats
        else:
            with tqdm(total=args.warmup, desc="warmup", leave=False) as bar:
                run_level(url, key, body, 1, args.warmup, args.timeout_s, deadline, bar)
            total = len(args.concurrency) * args.repeats * args.requests
            with tqdm(total=total, desc="requests") as bar:
                for concurrency in args.concurrency:
                    lat, srv, dec, errs, throughputs = [], [], [], [], []
                    for _ in range(args.repeats):
                        bar.set_postfix(clients=concurrency)
                        latencies, server_ms, decode_ms, errors, wall = run_level(
                            url, key, body, concurrency, args.requests, args.timeout_s, deadline, bar
                        )
                        lat += latencies
                        srv += server_ms
                        dec += decode_ms
                        errs += errors
                        throughputs.append(len(latencies) / wall if wall > 0 else 0.0)
                    if not lat:
                        raise RuntimeError(f"no successful request at concurrency {concurrency}: {errs[:5]}")
                    lat_arr, srv_arr = np.asarray(lat), np.asarray(srv)
                    levels.append(
                        {
                            "concurrency": concurrency,
                            "n_requests": len(lat),
                            "errors": len(errs),
                            "error_kinds": sorted(set(errs)),
                            "latency_ms": {f"p{q}": percentile_ci(lat_arr, q) for q in (50, 95, 99)},
                            "server_latency_ms": {f"p{q}": percentile_ci(srv_arr, q) for q in (50, 95, 99)},
                            "server_decode_ms": {"p50": percentile_ci(np.asarray(dec), 50)},
                            "throughput_rps": {**mean_ci(throughputs), "per_repeat": throughputs},
                        }
                    )
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
    if soak_result is not None:
        soak_result["server_exit_code"] = process.returncode  # 0: it shut down cleanly on SIGINT
        server_log.seek(0)
        text = server_log.read()
        soak_result["server_logged_model_errors"] = text.count("model error in act")
        soak_result["server_log_tail"] = text[-1500:] if soak_result["crashes"] else ""
        server_log.close()
        return write_soak(args, soak_result, info, load_at_start, f"JPEG {height}x{width}, quality 90")

    result = {
        "benchmark": "serve_load",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "load_average_at_start": load_at_start,
            "note": "server and load generator on the same machine, in separate processes",
        },
        "model": {k: info.get(k) for k in ("model_name", "case", "model_class", "device", "action_names")},
        "request": {
            "image": f"JPEG {height}x{width}, quality 85, {len(base64.b64decode(image_b64))} bytes",
            "body_bytes": len(body),
            "strategy": "receding_horizon",
        },
        "settings": {"requests_per_repeat": args.requests, "repeats": args.repeats, "warmup": args.warmup},
        "levels": levels,
    }
    previous = _read_json(args.out)
    if "soak" in previous:
        result["soak"] = previous["soak"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{result['model']['model_name']}  ({result['request']['image']})")
    print(
        f"{'clients':>7} {'n':>5} {'err':>4} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9} {'server p50':>10} {'decode p50':>10}  throughput req/s (95% CI)"
    )
    for level in levels:
        lat, tp = level["latency_ms"], level["throughput_rps"]
        ci = f"[{tp['ci95'][0]:.1f}, {tp['ci95'][1]:.1f}]" if tp["ci95"] else ""
        print(
            f"{level['concurrency']:>7} {level['n_requests']:>5} {level['errors']:>4} {lat['p50']['value']:>9.1f} "
            f"{lat['p95']['value']:>9.1f} {lat['p99']['value']:>9.1f} {level['server_latency_ms']['p50']['value']:>10.1f}"
            f" {level['server_decode_ms']['p50']['value']:>10.1f}"
            f"  {tp['mean']:.1f} {ci} (n={tp['n']} repeats)"
        )
    print(f"wrote {args.out}")
    return 0


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_soak(args: argparse.Namespace, result: dict, info: dict, load_at_start, image: str) -> int:
    """Put the soak's result under ``"soak"`` in ``args.out`` (keeping the load levels); print a summary."""
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "load_average_at_start": load_at_start,
            "note": "server and clients on the same machine, in separate processes",
        },
        "model": info.get("model_name"),
        "image": image,
        "fail_every": args.fail_every,
        **result,
    }
    document = _read_json(args.out)
    document["soak"] = result
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    lat = result["latency_ms"].get("all", {})
    p99 = lat.get("p99", {}).get("value", float("nan"))
    print(
        f"soak: {result['requests']} requests from {result['clients']} clients in {result['wall_s']:.0f} s; "
        f"crashes {result['crashes']}, non-finite actions {result['non_finite_actions']}, "
        f"failures {result['failures']} (answered zero: {result['failures_answered_zero']}), "
        f"violations {result['violations']}; p99 latency {p99:.1f} ms"
    )
    for source, n in result["outcomes"].items():
        print(f"  {n:>6}  {source}")
    print(f"wrote {args.out}")
    ok = result["crashes"] == 0 and result["violations"] == 0 and result["server_exit_code"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
