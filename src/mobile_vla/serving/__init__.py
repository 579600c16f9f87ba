"""Serving a policy to the robot: the inference server, its Python client and a ROS 2 node.

- ``app.create_app(policy, metadata, ServerConfig(...)) -> FastAPI``: the server around one ``ControlPolicy``.
- ``server.run_server`` / ``server.BackgroundServer``: uvicorn in the foreground or in a thread.
- ``client.VLAClient(url, api_key, timeout)``: the server as a ``ControlPolicy`` (errors and timeouts = stop).
- ``ros2_node``: camera topic -> server -> ``/cmd_vel`` (``python -m mobile_vla.serving.ros2_node --help``).
- ``loading.load_for_serving(target)``: a run directory or ``models:/NAME@ALIAS`` -> (policy, metadata).

Names are imported lazily so that ``from mobile_vla.serving.client import VLAClient`` stays light.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ServerConfig": "mobile_vla.serving.app",
    "create_app": "mobile_vla.serving.app",
    "BackgroundServer": "mobile_vla.serving.server",
    "run_server": "mobile_vla.serving.server",
    "VLAClient": "mobile_vla.serving.client",
    "VelocityLimits": "mobile_vla.serving.safety",
    "InputLimits": "mobile_vla.serving.protocol",
    "load_for_serving": "mobile_vla.serving.loading",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mobile_vla.serving' has no attribute {name!r}")
