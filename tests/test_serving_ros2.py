"""The ROS 2 node's logic without ROS: image messages, Twist fields, rate limiting, staleness -> zero."""

import io
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from mobile_vla.serving import ros2_node
from mobile_vla.serving.ros2_node import (
    ControlLoop,
    NodeConfig,
    RateLimiter,
    compressed_image_msg_to_array,
    image_msg_to_array,
    is_stale,
    twist_fields,
)

RGB = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)  # (H=2, W=3, 3)


def image_msg(pixels: np.ndarray, encoding: str, pad: int = 0) -> SimpleNamespace:
    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, -1)
    padded = np.concatenate([rows, np.full((height, pad), 255, np.uint8)], axis=1)
    return SimpleNamespace(
        height=height, width=width, encoding=encoding, step=padded.shape[1], data=padded.tobytes()
    )


def test_rgb8_message_becomes_the_same_array():
    np.testing.assert_array_equal(image_msg_to_array(image_msg(RGB, "rgb8")), RGB)


def test_bgr8_message_is_reordered_to_rgb():
    np.testing.assert_array_equal(image_msg_to_array(image_msg(RGB[:, :, ::-1].copy(), "bgr8")), RGB)


def test_alpha_is_dropped_and_row_padding_is_skipped():
    rgba = np.concatenate([RGB, np.full((2, 3, 1), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(image_msg_to_array(image_msg(rgba, "rgba8", pad=5)), RGB)
    bgra = np.concatenate([RGB[:, :, ::-1], np.full((2, 3, 1), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(image_msg_to_array(image_msg(bgra, "bgra8")), RGB)


def test_mono8_is_repeated_to_three_channels():
    mono = np.array([[0, 50, 100], [150, 200, 250]], np.uint8)
    out = image_msg_to_array(image_msg(mono[:, :, None], "mono8"))
    assert out.shape == (2, 3, 3)
    np.testing.assert_array_equal(out[:, :, 1], mono)


def test_unsupported_encoding_and_short_data_are_refused():
    with pytest.raises(ValueError, match="16UC1"):
        image_msg_to_array(SimpleNamespace(height=1, width=1, encoding="16UC1", step=2, data=b"\0\0"))
    msg = image_msg(RGB, "rgb8")
    msg.data = msg.data[:-1]
    with pytest.raises(ValueError, match="bytes"):
        image_msg_to_array(msg)


def test_compressed_jpeg_message_is_decoded():
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 10, 3), 120, np.uint8)).save(buffer, format="JPEG")
    out = compressed_image_msg_to_array(SimpleNamespace(format="jpeg", data=buffer.getvalue()))
    assert out.shape == (8, 10, 3) and abs(int(out.mean()) - 120) <= 2


def test_action_axes_map_to_twist_fields():
    fields = twist_fields(np.array([0.5, -0.25, 0.1]), ("linear_x", "linear_y", "angular_z"))
    assert fields == {"linear": (0.5, -0.25, 0.0), "angular": (0.0, 0.0, pytest.approx(0.1))}
    assert twist_fields(np.array([1.15, 0.0]), ("linear_x", "linear_y"))["angular"] == (0.0, 0.0, 0.0)


def test_a_non_finite_action_becomes_a_zero_twist():
    fields = twist_fields(np.array([0.5, np.nan]), ("linear_x", "linear_y"))
    assert fields == {"linear": (0.0, 0.0, 0.0), "angular": (0.0, 0.0, 0.0)}


def test_unknown_axes_are_refused():
    with pytest.raises(ValueError, match="wheel"):
        twist_fields(np.array([1.0]), ("wheel",))
    with pytest.raises(ValueError, match="values"):
        twist_fields(np.array([1.0, 2.0]), ("linear_x",))


def test_rate_limiter_lets_one_event_through_per_period():
    limiter = RateLimiter(0.3)
    passed = []
    for now in np.arange(0.0, 1.0, 0.1):
        if limiter.ready(now):
            limiter.mark(now)
            passed.append(round(float(now), 1))
    assert passed == [0.0, 0.3, 0.6, 0.9]  # 0.9 - 0.6 is 0.2999... in floating point: slack absorbs it
    assert not limiter.ready(0.9 + 0.29)
    with pytest.raises(ValueError, match="period"):
        RateLimiter(0)


def test_staleness():
    assert is_stale(None, 5.0, 1.0)
    assert not is_stale(4.5, 5.0, 1.0)
    assert is_stale(3.9, 5.0, 1.0)


def make_loop(**overrides) -> ControlLoop:
    settings = {
        "control_period_s": 0.3,
        "action_hold_s": 0.4,
        "image_timeout_s": 1.0,
        "instruction": "go left",
    }
    config = NodeConfig(**{**settings, **overrides})
    return ControlLoop(config, action_dim=2)


IMAGE = np.zeros((4, 4, 3), np.uint8)
GO = np.array([1.15, 0.0], np.float32)


def test_no_request_and_zero_command_before_the_first_frame():
    loop = make_loop()
    assert loop.next_request(0.0) is None
    np.testing.assert_array_equal(loop.command(0.0), [0.0, 0.0])
    assert loop.last_stop_reason == "image_timeout"


def test_requests_follow_the_control_period_one_in_flight_at_most():
    loop = make_loop()
    loop.on_image(IMAGE, 0.0)
    frame, instruction = loop.next_request(0.0)
    assert frame is IMAGE and instruction == "go left"
    loop.on_image(IMAGE, 0.35)
    assert loop.next_request(0.35) is None  # the first request is still in flight
    loop.on_result(GO, stopped=False, now=0.36)
    assert loop.next_request(0.4) is not None  # period elapsed and nothing in flight
    loop.on_result(GO, stopped=False, now=0.45)
    assert loop.next_request(0.5) is None  # within the period
    assert loop.steps == 2


def test_an_action_is_held_then_the_robot_stops():
    loop = make_loop()
    loop.on_image(IMAGE, 0.0)
    loop.next_request(0.0)
    loop.on_result(GO, stopped=False, now=0.1)
    np.testing.assert_array_equal(loop.command(0.3), GO)
    np.testing.assert_array_equal(loop.command(0.49), GO)
    np.testing.assert_array_equal(loop.command(0.51), [0.0, 0.0])  # held 0.4 s, then zero


def test_a_silent_camera_stops_the_robot_even_with_a_fresh_action():
    loop = make_loop(action_hold_s=5.0)
    loop.on_image(IMAGE, 0.0)
    loop.next_request(0.0)
    loop.on_result(GO, stopped=False, now=0.2)
    np.testing.assert_array_equal(loop.command(0.9), GO)
    np.testing.assert_array_equal(loop.command(1.1), [0.0, 0.0])  # last frame is 1.1 s old
    assert loop.next_request(1.1) is None


@pytest.mark.parametrize("outcome", ["stopped", "failure", "nan", "wrong_length"])
def test_a_failed_or_stopped_step_publishes_zero(outcome):
    loop = make_loop()
    loop.on_image(IMAGE, 0.0)
    loop.next_request(0.0)
    loop.on_result(GO, stopped=False, now=0.05)
    loop.on_image(IMAGE, 0.3)
    loop.next_request(0.3)
    if outcome == "stopped":
        loop.on_result(np.zeros(2), stopped=True, now=0.35, reason="client_stop:timeout")
    elif outcome == "failure":
        loop.on_failure(0.35)
    elif outcome == "nan":
        loop.on_result(np.array([np.nan, 0.0]), stopped=False, now=0.35)
    else:
        loop.on_result(np.array([1.0, 0.0, 0.0]), stopped=False, now=0.35)
    np.testing.assert_array_equal(loop.command(0.36), [0.0, 0.0])  # the previous GO is not reused
    assert loop.last_stop_reason
    assert loop.next_request(0.61) is not None  # and the next step is tried


def test_max_steps_ends_the_episode_and_a_new_instruction_starts_another():
    loop = make_loop(max_steps=2)
    for i in range(3):
        now = i * 0.3
        loop.on_image(IMAGE, now)
        request = loop.next_request(now)
        if request is not None:
            loop.on_result(GO, stopped=False, now=now + 0.01)
    assert loop.steps == 2 and loop.done
    assert not loop.set_instruction("   ")
    assert loop.set_instruction("go right")
    assert loop.steps == 0 and loop.next_request(0.9)[1] == "go right"


def test_node_config_names_bad_values():
    with pytest.raises(ValueError, match="control_period_s"):
        NodeConfig(control_period_s=0)
    with pytest.raises(ValueError, match="max_steps"):
        NodeConfig(max_steps=0)


def test_the_node_explains_how_to_get_ros_when_rclpy_is_missing(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "rclpy", None)  # import rclpy -> ImportError, even where ROS exists
    assert ros2_node.main(["--server", "http://127.0.0.1:1"]) == 2
    assert "source /opt/ros" in capsys.readouterr().err


def test_the_node_has_help_without_ros():
    out = subprocess.run(
        [sys.executable, "-m", "mobile_vla.serving.ros2_node", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "--image-topic" in out.stdout


class _Vector3:
    def __init__(self) -> None:
        self.x = self.y = self.z = 0.0


class _Twist:
    def __init__(self) -> None:
        self.linear, self.angular = _Vector3(), _Vector3()


class _FakeNode:
    """Just enough of rclpy.node.Node to run run_node's wiring."""

    instances: list = []

    def __init__(self, name: str) -> None:
        self.subscriptions, self.timers, self.published = {}, [], []
        _FakeNode.instances.append(self)

    def create_publisher(self, msg_type, topic, depth):
        return SimpleNamespace(publish=lambda msg: self.published.append((topic, msg)))

    def create_subscription(self, msg_type, topic, callback, depth):
        self.subscriptions[topic] = callback

    def create_timer(self, period, callback):
        self.timers.append((period, callback))

    def destroy_node(self) -> None:
        pass


def _fake_ros(monkeypatch, spin) -> None:
    modules = {
        "rclpy": SimpleNamespace(init=lambda: None, spin=spin, ok=lambda: True, shutdown=lambda: None),
        "rclpy.node": SimpleNamespace(Node=_FakeNode),
        "geometry_msgs": SimpleNamespace(),
        "geometry_msgs.msg": SimpleNamespace(Twist=_Twist),
        "sensor_msgs": SimpleNamespace(),
        "sensor_msgs.msg": SimpleNamespace(Image=object, CompressedImage=object),
        "std_msgs": SimpleNamespace(),
        "std_msgs.msg": SimpleNamespace(String=object),
    }
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)


def test_the_rclpy_wrapper_turns_camera_frames_into_twists_and_stops_on_exit(monkeypatch):
    import time

    from mobile_vla.serving.app import ServerConfig, create_app
    from mobile_vla.serving.server import BackgroundServer
    from mobile_vla.serving.testing import ImageStatsPolicy

    pixels = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    expected = ImageStatsPolicy().act(pixels, "go left")

    def spin(node) -> None:
        (control_period, control), (_, publish) = node.timers
        node.subscriptions["/camera/image_raw"](image_msg(pixels, "rgb8"))
        control()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            publish()
            if node.published[-1][1].linear.x != 0.0:
                break
            time.sleep(0.01)
        raise KeyboardInterrupt

    _fake_ros(monkeypatch, spin)
    app = create_app(ImageStatsPolicy(), {}, ServerConfig(insecure_no_auth=True))
    with BackgroundServer(app) as server:
        config = NodeConfig(server_url=server.url, instruction="go left", image_format="png")
        ros2_node.run_node(config, api_key=None)
    node = _FakeNode.instances[-1]
    moving, final = node.published[-2][1], node.published[-1][1]
    assert node.published[-1][0] == "/cmd_vel"
    assert (moving.linear.x, moving.linear.y) == pytest.approx(tuple(expected), rel=1e-6)
    assert (final.linear.x, final.linear.y, final.angular.z) == (0.0, 0.0, 0.0)  # zero on shutdown
