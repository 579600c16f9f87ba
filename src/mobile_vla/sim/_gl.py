"""Pick MuJoCo's headless OpenGL backend before `mujoco` is first imported.

MuJoCo reads `MUJOCO_GL` once, at import. On a machine without a display we want software rendering:
`osmesa` (Debian's `libosmesa6`) is about twice as fast as Mesa's `egl` on CPU, and `egl` needs no extra
package. A value the user set is always kept.
"""

from __future__ import annotations

import ctypes.util
import logging
import os
import sys


def osmesa_available() -> bool:
    """Whether the OSMesa library can be loaded (Debian: `apt-get install libosmesa6`)."""
    return ctypes.util.find_library("OSMesa") is not None


def ensure_gl_backend() -> str:
    """Set `MUJOCO_GL` unless already set; returns the backend in use."""
    logging.getLogger("OpenGL").setLevel(logging.WARNING)  # PyOpenGL logs its optional speedups at INFO
    backend = os.environ.get("MUJOCO_GL")
    if backend:
        return backend
    if "mujoco" in sys.modules:  # too late to choose: mujoco has already read the variable
        return "default"
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
        backend = "osmesa" if osmesa_available() else "egl"
        os.environ["MUJOCO_GL"] = backend
        return backend
    return "glfw"
