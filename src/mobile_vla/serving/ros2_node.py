"""A ROS 2 node that drives the robot from the inference server: camera in, ``geometry_msgs/Twist`` out.

Usage (on the robot, in a shell where ROS 2 is sourced, with this package installed)::

    source /opt/ros/humble/setup.bash
    export VLA_API_KEY=...                       # the server's key (or --api-key-file FILE)
    python -m mobile_vla.serving.ros2_node --server http://GPU_HOST:8000 \\
        --image-topic /camera/image_raw --cmd-vel-topic /cmd_vel \\
        --instruction "Navigate around obstacles and reach the front of the beverage bottle on the left" \\
        --control-period 0.3 --hold 0.4 --publish-rate 10 --max-steps 18

What it does:

- subscribes to ``--image-topic`` (``sensor_msgs/Image``: rgb8, bgr8, rgba8, bgra8, mono8; or
  ``sensor_msgs/CompressedImage`` with ``--compressed``) and keeps the latest frame;
- every ``--control-period`` seconds (the lab's node: 0.3 s), if the latest frame is fresh and no request is in
  flight, sends it with the instruction to the server (in a worker thread, so a slow server never blocks the
  ROS executor);
- publishes on ``--cmd-vel-topic`` at ``--publish-rate`` Hz: the latest action while it is younger than
  ``--hold`` seconds (the lab holds each action 0.4 s), and **zero** otherwise: when the action is older than
  that, the camera is silent for ``--image-timeout`` seconds, the request failed or timed out
  (``--request-timeout``), the server answered with a safe stop, or ``--max-steps`` steps are done;
- a message on ``--instruction-topic`` (``std_msgs/String``) sets a new instruction and starts a new episode
  (server ``/reset``, step count 0);
- publishes zero on shutdown (Ctrl-C).

ROS 2 is not a dependency of this package: ``rclpy`` and the message packages are imported only when the node
starts. The logic lives in plain functions and :class:`ControlLoop` (tested without ROS); ``run_node`` is a
thin wrapper around them.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

# Twist field for each action axis name (geometry_msgs/Twist has linear.{x,y,z} and angular.{x,y,z}).
TWIST_FIELDS = {
    "linear_x": ("linear", 0),
    "linear_y": ("linear", 1),
    "linear_z": ("linear", 2),
    "angular_x": ("angular", 0),
    "angular_y": ("angular", 1),
    "angular_z": ("angular", 2),
}

_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "8uc1": 1, "8uc3": 3}


# --- plain functions: messages <-> arrays ----------------------------------------------------------------------


def image_msg_to_array(msg) -> np.ndarray:
    """``sensor_msgs/Image`` (or anything with ``height, width, encoding, step, data``) -> uint8 RGB [H, W, 3].

    Handles row padding (``step`` > ``width * channels``) and BGR/alpha/mono encodings; 16-bit and Bayer
    encodings are refused with a message naming the encoding.
    """
    encoding = str(msg.encoding).lower()
    if encoding not in _CHANNELS:
        raise ValueError(
            f"image encoding {msg.encoding!r} is not supported; publish one of {sorted(_CHANNELS)} "
            "(or use --compressed with a JPEG/PNG topic)"
        )
    channels = _CHANNELS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    row_bytes = width * channels
    if step < row_bytes:
        raise ValueError(f"image step {step} is smaller than width*channels = {row_bytes}")
    buffer = np.frombuffer(bytes(msg.data), dtype=np.uint8)
    if buffer.size < height * step:
        raise ValueError(f"image data has {buffer.size} bytes, expected height*step = {height * step}")
    rows = buffer[: height * step].reshape(height, step)[:, :row_bytes]  # (H, W*C), padding dropped
    pixels = rows.reshape(height, width, channels)
    if channels == 1:
        return np.repeat(pixels, 3, axis=2)
    if encoding.startswith("bgr"):
        pixels = pixels[:, :, 2::-1]  # BGR(A) -> RGB, alpha dropped
    return np.ascontiguousarray(pixels[:, :, :3])


def compressed_image_msg_to_array(msg) -> np.ndarray:
    """``sensor_msgs/CompressedImage`` (JPEG/PNG bytes in ``data``) -> uint8 RGB [H, W, 3]."""
    from PIL import Image

    with Image.open(io.BytesIO(bytes(msg.data))) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


def twist_fields(action: np.ndarray, action_dims: tuple[str, ...]) -> dict[str, tuple[float, float, float]]:
    """Action over ``action_dims`` -> ``{"linear": (x, y, z), "angular": (x, y, z)}``; absent axes are 0.

    A non-finite value makes the whole command zero: half a command is not a safe command.
    """
    check_action_dims(action_dims)
    values = np.asarray(action, dtype=np.float64).reshape(-1)
    if values.shape[0] != len(action_dims):
        raise ValueError(f"action has {values.shape[0]} values but action_dims has {len(action_dims)}")
    out = {"linear": [0.0, 0.0, 0.0], "angular": [0.0, 0.0, 0.0]}
    if np.all(np.isfinite(values)):
        for name, value in zip(action_dims, values, strict=True):
            group, index = TWIST_FIELDS[name]
            out[group][index] = float(value)
    return {k: tuple(v) for k, v in out.items()}


def check_action_dims(action_dims: tuple[str, ...]) -> None:
    unknown = [a for a in action_dims if a not in TWIST_FIELDS]
    if unknown:
        raise ValueError(f"action axes {unknown} have no Twist field; known axes: {sorted(TWIST_FIELDS)}")


def is_stale(stamp: float | None, now: float, max_age_s: float) -> bool:
    """True when nothing has arrived yet or it arrived more than ``max_age_s`` ago."""
    return stamp is None or now - stamp > max_age_s


class RateLimiter:
    """Lets an event through at most once per ``period_s`` (monotonic seconds).

    ``slack_s`` (default: 1% of the period, at most 5 ms) absorbs float rounding and timer jitter: without it a
    check that comes a hair early (0.9 - 0.6 = 0.2999...) skips a whole timer tick and stretches the period.
    """

    def __init__(self, period_s: float, slack_s: float | None = None) -> None:
        if not period_s > 0:
            raise ValueError(f"period must be > 0 seconds, got {period_s!r}")
        self.period_s = period_s
        self.slack_s = min(0.01 * period_s, 0.005) if slack_s is None else slack_s
        self._last: float | None = None

    def ready(self, now: float) -> bool:
        return self._last is None or now - self._last >= self.period_s - self.slack_s

    def mark(self, now: float) -> None:
        self._last = now

    def reset(self) -> None:
        self._last = None


# --- the control loop, without ROS -----------------------------------------------------------------------------


@dataclass
class NodeConfig:
    """Settings of the robot-side node (defaults follow the lab's inference node).

    Attributes:
        server_url: the inference server, e.g. ``http://192.168.0.10:8000``.
        instruction: the task sent with every frame (changeable at run time on ``instruction_topic``).
        image_topic / compressed: the camera topic and whether it is ``sensor_msgs/CompressedImage``.
        cmd_vel_topic: where ``geometry_msgs/Twist`` goes.
        instruction_topic: ``std_msgs/String`` topic that sets a new instruction ("" disables it).
        control_period_s: one inference request at most every this many seconds (lab: 0.3).
        action_hold_s: an action is published for this long after it arrives, then zero (lab: 0.4).
        publish_rate_hz: how often ``cmd_vel`` is published (the base's watchdog wants a steady stream).
        image_timeout_s: a frame older than this is not sent, and the robot stops.
        request_timeout_s: the HTTP timeout; a late answer is a stop.
        max_steps: stop after this many control steps (lab: 18); None for no limit.
        strategy: ``receding_horizon`` | ``chunk_reuse`` | None (the server's default).
        image_format: ``jpeg`` (what the lab's robot sends, small on Wi-Fi) or ``png``.
    """

    server_url: str = "http://127.0.0.1:8000"
    instruction: str = "Navigate around obstacles and reach the front of the beverage bottle on the left"
    image_topic: str = "/camera/image_raw"
    compressed: bool = False
    cmd_vel_topic: str = "/cmd_vel"
    instruction_topic: str = "/vla/instruction"
    control_period_s: float = 0.3
    action_hold_s: float = 0.4
    publish_rate_hz: float = 10.0
    image_timeout_s: float = 1.0
    request_timeout_s: float = 1.0
    max_steps: int | None = None
    strategy: str | None = None
    image_format: str = "jpeg"

    def __post_init__(self) -> None:
        for name in (
            "control_period_s",
            "action_hold_s",
            "publish_rate_hz",
            "image_timeout_s",
            "request_timeout_s",
        ):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"NodeConfig.{name} must be > 0, got {value!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"NodeConfig.max_steps must be >= 1 or None, got {self.max_steps!r}")
        if not self.instruction.strip():
            raise ValueError("NodeConfig.instruction is empty; give the task the robot should do")


class ControlLoop:
    """The node's decisions as plain methods over monotonic time, thread-safe (image callbacks, timers and
    the request worker call it from different threads).

    - ``on_image(frame, now)``: a new camera frame.
    - ``next_request(now) -> (frame, instruction) | None``: what to send now, if anything (rate limited, one
      request in flight at most, fresh frames only, at most ``max_steps``).
    - ``on_result(action, stopped, now)`` / ``on_failure(now)``: the request's outcome.
    - ``command(now) -> (A,)``: what to publish now (zero unless a fresh, successful action is held).
    """

    def __init__(self, config: NodeConfig, action_dim: int) -> None:
        self.config = config
        self.action_dim = action_dim
        self._lock = threading.Lock()
        self._limiter = RateLimiter(config.control_period_s)
        self._instruction = config.instruction.strip()
        self._frame: np.ndarray | None = None
        self._frame_time: float | None = None
        self._action = np.zeros(action_dim, dtype=np.float32)
        self._action_time: float | None = None
        self._in_flight = False
        self.steps = 0
        self.last_stop_reason: str | None = None

    @property
    def instruction(self) -> str:
        return self._instruction

    @property
    def done(self) -> bool:
        return self.config.max_steps is not None and self.steps >= self.config.max_steps

    def on_image(self, frame: np.ndarray, now: float) -> None:
        with self._lock:
            self._frame, self._frame_time = frame, now

    def set_instruction(self, instruction: str) -> bool:
        """A new task: start a new episode. Returns False (and changes nothing) for an empty one."""
        text = instruction.strip()
        if not text:
            return False
        with self._lock:
            self._instruction = text
            self._reset_locked()
        return True

    def reset(self) -> None:
        with self._lock:
            self._reset_locked()

    def _reset_locked(self) -> None:
        self.steps = 0
        self._action_time = None
        self._action = np.zeros(self.action_dim, dtype=np.float32)
        self._limiter.reset()
        self.last_stop_reason = None

    def next_request(self, now: float) -> tuple[np.ndarray, str] | None:
        with self._lock:
            if self._in_flight or self.done or not self._limiter.ready(now):
                return None
            if is_stale(self._frame_time, now, self.config.image_timeout_s):
                self.last_stop_reason = "image_timeout"
                return None
            self._limiter.mark(now)
            self._in_flight = True
            self.steps += 1
            return self._frame, self._instruction

    def on_result(self, action: np.ndarray, stopped: bool, now: float, reason: str | None = None) -> None:
        with self._lock:
            self._in_flight = False
            values = np.asarray(action, dtype=np.float32).reshape(-1)
            if stopped or values.shape != (self.action_dim,) or not np.all(np.isfinite(values)):
                self._action_time = None
                self.last_stop_reason = reason or "stopped"
                return
            self._action, self._action_time = values, now
            self.last_stop_reason = None

    def on_failure(self, now: float, reason: str = "request_failed") -> None:
        self.on_result(np.zeros(self.action_dim, dtype=np.float32), True, now, reason)

    def command(self, now: float) -> np.ndarray:
        with self._lock:
            if is_stale(self._frame_time, now, self.config.image_timeout_s):
                return np.zeros(self.action_dim, dtype=np.float32)
            if is_stale(self._action_time, now, self.config.action_hold_s):
                return np.zeros(self.action_dim, dtype=np.float32)
            return self._action.copy()


# --- the thin rclpy wrapper ------------------------------------------------------------------------------------


def _import_ros():
    try:
        import rclpy
        from geometry_msgs.msg import Twist
        from rclpy.node import Node
        from sensor_msgs.msg import CompressedImage, Image
        from std_msgs.msg import String
    except ImportError as exc:
        raise RuntimeError(
            f"ROS 2 Python packages are not importable ({exc}); source your ROS 2 setup first, e.g. "
            "`source /opt/ros/humble/setup.bash`, in the same shell as this command"
        ) from None
    return rclpy, Node, Twist, Image, CompressedImage, String


def run_node(config: NodeConfig, api_key: str | None) -> None:
    """Spin the node until Ctrl-C. Needs ROS 2 (``rclpy``, ``geometry_msgs``, ``sensor_msgs``, ``std_msgs``)."""
    from concurrent.futures import ThreadPoolExecutor

    from mobile_vla.serving.client import VLAClient

    rclpy, Node, Twist, Image, CompressedImage, String = _import_ros()
    with VLAClient(config.server_url, api_key=api_key, timeout=max(config.request_timeout_s, 5.0)) as probe:
        try:  # fail at startup, not in the loop, when the server is unreachable or the key is wrong
            action_dims = tuple(probe.model_info()["action_names"])
        except Exception as exc:
            raise RuntimeError(f"cannot read {config.server_url}/model/info: {exc}") from None
    check_action_dims(action_dims)
    client = VLAClient(
        config.server_url,
        api_key=api_key,
        timeout=config.request_timeout_s,
        strategy=config.strategy,
        action_dims=action_dims,
        image_format=config.image_format,
    )
    loop = ControlLoop(config, len(action_dims))
    client.reset()

    rclpy.init()
    node = Node("mobile_vla_client")
    publisher = node.create_publisher(Twist, config.cmd_vel_topic, 10)
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vla-request")

    def publish(action: np.ndarray) -> None:
        fields = twist_fields(action, action_dims)
        msg = Twist()
        msg.linear.x, msg.linear.y, msg.linear.z = fields["linear"]
        msg.angular.x, msg.angular.y, msg.angular.z = fields["angular"]
        publisher.publish(msg)

    convert = compressed_image_msg_to_array if config.compressed else image_msg_to_array

    def on_image(msg) -> None:
        try:
            loop.on_image(convert(msg), time.monotonic())
        except Exception as exc:  # a bad frame must not kill the node; staleness will stop the robot
            logger.warning("dropped a camera frame: %s", exc)

    def request(frame: np.ndarray, instruction: str) -> None:
        try:
            result = client.predict(frame, instruction)
            loop.on_result(result.action, result.stopped, time.monotonic(), result.source)
        except Exception as exc:
            loop.on_failure(time.monotonic(), f"client_error:{type(exc).__name__}")

    def on_control_timer() -> None:
        pending = loop.next_request(time.monotonic())
        if pending is not None:
            worker.submit(request, *pending)

    def on_instruction(msg) -> None:
        if loop.set_instruction(msg.data):
            logger.info("new instruction: %r (new episode)", loop.instruction)
            worker.submit(client.reset)

    node.create_subscription(CompressedImage if config.compressed else Image, config.image_topic, on_image, 1)
    if config.instruction_topic:
        node.create_subscription(String, config.instruction_topic, on_instruction, 10)
    # Tick often and let the limiter keep the period: a request still in flight at one tick is retried a
    # tick later, not a whole period later.
    node.create_timer(min(config.control_period_s / 4, 0.05), on_control_timer)
    node.create_timer(1.0 / config.publish_rate_hz, lambda: publish(loop.command(time.monotonic())))
    logger.info(
        "driving %s from %s (images: %s, period %.2f s, hold %.2f s)",
        config.cmd_vel_topic,
        config.server_url,
        config.image_topic,
        config.control_period_s,
        config.action_hold_s,
    )
    try:
        rclpy.spin(node)
    except KeyboardInterrupt:
        pass
    finally:
        publish(np.zeros(len(action_dims), dtype=np.float32))
        worker.shutdown(wait=False, cancel_futures=True)
        client.close()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


def build_parser() -> argparse.ArgumentParser:
    d = NodeConfig()
    p = argparse.ArgumentParser(
        prog="python -m mobile_vla.serving.ros2_node",
        description="ROS 2 node: camera topic -> mobile-vla inference server -> geometry_msgs/Twist on /cmd_vel.",
    )
    p.add_argument("--server", default=d.server_url, help=f"inference server URL (default {d.server_url})")
    p.add_argument("--api-key-file", help="file holding the server's API key (default: $VLA_API_KEY)")
    p.add_argument("--instruction", default=d.instruction, help="task instruction sent with every frame")
    p.add_argument("--image-topic", default=d.image_topic)
    p.add_argument("--compressed", action="store_true", help="the image topic is sensor_msgs/CompressedImage")
    p.add_argument("--cmd-vel-topic", default=d.cmd_vel_topic)
    p.add_argument("--instruction-topic", default=d.instruction_topic, help='"" to disable')
    p.add_argument(
        "--control-period", type=float, default=d.control_period_s, help="seconds between requests"
    )
    p.add_argument("--hold", type=float, default=d.action_hold_s, help="seconds an action is held, then zero")
    p.add_argument("--publish-rate", type=float, default=d.publish_rate_hz, help="cmd_vel rate in Hz")
    p.add_argument(
        "--image-timeout", type=float, default=d.image_timeout_s, help="stop when frames are older"
    )
    p.add_argument("--request-timeout", type=float, default=d.request_timeout_s, help="HTTP timeout, seconds")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (lab: 18)")
    p.add_argument("--strategy", choices=("receding_horizon", "chunk_reuse"), default=None)
    p.add_argument("--image-format", choices=("jpeg", "png"), default=d.image_format)
    return p


def main(argv: list[str] | None = None) -> int:
    from mobile_vla.serving.auth import AuthConfigError, load_api_key

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = NodeConfig(
            server_url=args.server,
            instruction=args.instruction,
            image_topic=args.image_topic,
            compressed=args.compressed,
            cmd_vel_topic=args.cmd_vel_topic,
            instruction_topic=args.instruction_topic,
            control_period_s=args.control_period,
            action_hold_s=args.hold,
            publish_rate_hz=args.publish_rate,
            image_timeout_s=args.image_timeout,
            request_timeout_s=args.request_timeout,
            max_steps=args.max_steps,
            strategy=args.strategy,
            image_format=args.image_format,
        )
        api_key = load_api_key(args.api_key_file, os.environ)
        run_node(config, api_key)
    except (ValueError, AuthConfigError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
