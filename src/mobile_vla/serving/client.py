"""A Python client for the inference server that is itself a ``ControlPolicy``: anything that drives a policy
(the simulator, a ROS 2 node, a script) can drive a remote one.

    from mobile_vla.serving.client import VLAClient
    client = VLAClient("http://127.0.0.1:8000", api_key=os.environ["VLA_API_KEY"], timeout=1.0)
    client.reset()
    action = client.act(frame, "Navigate around obstacles and reach the front of the beverage bottle on the left")
    if client.last.stopped:
        print("stopped:", client.last.source, client.last.error)

The client never raises from ``act``: a timeout, a refused connection, a 4xx/5xx, a malformed answer or a
non-finite action all return zeros (stop) and say why in ``client.last`` (``source="client_stop:<reason>"``),
in a warning in the log and in ``client.stats``. That is what a robot needs: a missed control step must
stop it, not crash the control loop.

Images go as PNG by default (lossless: the server sees exactly the frame the simulator rendered, so a policy
scores the same through the server as in process); ``image_format="jpeg"`` sends what the lab's robot sends.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import httpx
import numpy as np

from mobile_vla.serving.protocol import STRATEGIES, encode_image

logger = logging.getLogger(__name__)

DEFAULT_ACTION_DIMS = ("linear_x", "linear_y")


@dataclass
class PredictResult:
    """One call's outcome. ``source`` is the server's (``inferred``, ``reused``, ``safe_stop:...``) or
    ``client_stop:<reason>`` when no usable answer came back (then ``error`` says what happened)."""

    action: np.ndarray  # (A,) float32
    source: str
    latency_ms: float  # round trip, measured by the client
    server_latency_ms: float | None = None
    strategy: str | None = None
    error: str | None = None
    response: dict | None = None

    @property
    def stopped(self) -> bool:
        """True when the robot is being told to stop because something failed (client or server side)."""
        return self.source.startswith(("client_stop:", "safe_stop:"))


@dataclass
class ClientStats:
    requests: int = 0
    stops: dict[str, int] = field(default_factory=dict)

    def count_stop(self, source: str) -> None:
        self.stops[source] = self.stops.get(source, 0) + 1


class VLAClient:
    """``ControlPolicy`` over HTTP. One instance per control loop (an ``httpx.Client`` keeps the connection).

    Args:
        url: the server, e.g. ``http://127.0.0.1:8000``.
        api_key: sent as ``X-API-Key`` (None for a ``--insecure-no-auth`` server).
        timeout: seconds for one request, connect included; past it the action is zero (stop).
        strategy: sent with every request (None: the server's default).
        action_dims: the action axes; None asks the server (``/model/info``) on first use, falling back to
            ``("linear_x", "linear_y")`` with a warning if it cannot be reached.
        image_format: ``png`` (lossless, default) or ``jpeg``.
    """

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        timeout: float = 1.0,
        strategy: str | None = None,
        action_dims: tuple[str, ...] | None = None,
        image_format: str = "png",
        jpeg_quality: int = 90,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {url!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        if strategy is not None and strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES} or None, got {strategy!r}")
        if image_format.lower() not in ("png", "jpeg", "jpg"):
            raise ValueError(f"image_format must be 'png' or 'jpeg', got {image_format!r}")
        self.url = url.rstrip("/")
        self.timeout = float(timeout)
        self.strategy = strategy
        self.image_format = image_format
        self.jpeg_quality = jpeg_quality
        self._action_dims = tuple(action_dims) if action_dims else None
        headers = {"X-API-Key": api_key} if api_key else {}
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=httpx.Timeout(self.timeout), transport=transport
        )
        self.last: PredictResult | None = None
        self.stats = ClientStats()

    def __repr__(self) -> str:  # never shows the key
        return f"VLAClient(url={self.url!r}, timeout={self.timeout}, strategy={self.strategy!r})"

    # --- the ControlPolicy protocol -------------------------------------------------------------------------

    @property
    def action_dims(self) -> tuple[str, ...]:
        if self._action_dims is None:
            try:
                info = self.model_info()
                self._action_dims = tuple(info["action_names"])
            except Exception as exc:  # the server is down: the loop must still be able to send stops
                logger.warning(
                    "could not read action_dims from %s/model/info (%s); assuming %s",
                    self.url,
                    _describe(exc),
                    DEFAULT_ACTION_DIMS,
                )
                return DEFAULT_ACTION_DIMS
        return self._action_dims

    def reset(self) -> None:
        """Ask the server to clear its history and chunk buffer. Logs (does not raise) on failure."""
        try:
            response = self._http.post("/reset")
            response.raise_for_status()
        except Exception as exc:
            logger.warning("reset on %s failed: %s", self.url, _describe(exc))

    def act(self, image: np.ndarray, instruction: str) -> np.ndarray:
        """The server's action for this frame, or zeros (stop) if it did not come back in time and intact."""
        return self.predict(image, instruction).action

    # --- more detail ------------------------------------------------------------------------------------------

    def predict(self, image: np.ndarray, instruction: str, strategy: str | None = None) -> PredictResult:
        """Like ``act`` but returns the whole outcome (source, latencies, error). Never raises."""
        self.stats.requests += 1
        start = time.perf_counter()
        body = {"instruction": instruction}
        strategy = strategy or self.strategy
        if strategy is not None:
            body["strategy"] = strategy
        try:
            body["image"] = encode_image(image, self.image_format, self.jpeg_quality)
            response = self._http.post("/predict", json=body)
        except httpx.TimeoutException:
            return self._stop("timeout", f"no answer within {self.timeout} s", start)
        except httpx.HTTPError as exc:
            return self._stop("connection_error", _describe(exc), start)
        except ValueError as exc:  # the image could not be encoded
            return self._stop("bad_image", str(exc), start)
        if response.status_code != 200:
            return self._stop(f"http_{response.status_code}", _detail(response), start)
        try:
            payload = response.json()
            action = np.asarray(payload["action"], dtype=np.float32)
            source = str(payload["source"])
        except Exception as exc:
            return self._stop("bad_response", f"unreadable answer: {_describe(exc)}", start)
        expected = len(self._action_dims) if self._action_dims else None
        if action.ndim != 1 or (expected is not None and action.shape[0] != expected):
            return self._stop("bad_response", f"action has shape {list(action.shape)}", start)
        if not np.all(np.isfinite(action)):
            return self._stop("bad_response", "action is not finite", start)
        result = PredictResult(
            action=action,
            source=source,
            latency_ms=(time.perf_counter() - start) * 1000.0,
            server_latency_ms=_float_or_none(payload.get("latency_ms")),
            strategy=payload.get("strategy"),
            response=payload,
        )
        if result.stopped:
            self.stats.count_stop(source)
            logger.warning("server answered with a safe stop: %s", source)
        self.last = result
        return result

    def health(self) -> dict:
        """``GET /health`` (raises ``httpx.HTTPError`` on failure: for setup checks, not the control loop)."""
        response = self._http.get("/health")
        response.raise_for_status()
        return response.json()

    def model_info(self) -> dict:
        """``GET /model/info`` (raises ``httpx.HTTPError`` on failure)."""
        response = self._http.get("/model/info")
        response.raise_for_status()
        return response.json()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> VLAClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _stop(self, reason: str, error: str, start: float) -> PredictResult:
        source = f"client_stop:{reason}"
        # Not self.action_dims: asking a server that just timed out would block the loop a second time.
        size = len(self._action_dims or DEFAULT_ACTION_DIMS)
        result = PredictResult(
            action=np.zeros(size, dtype=np.float32),
            source=source,
            latency_ms=(time.perf_counter() - start) * 1000.0,
            error=error,
        )
        self.stats.count_stop(source)
        logger.warning("stopping the robot (%s): %s", source, error)
        self.last = result
        return result


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except Exception:
        detail = response.text[:200]
    return f"HTTP {response.status_code}: {detail}"


def _float_or_none(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None
