"""The MuJoCo scene: a room, cardboard boxes, a PET bottle and a round omni base with a forward camera.

The model is compiled once; an episode's layout is applied by writing into the compiled model's arrays
(body positions, geom sizes, material colours, lights) and calling `mj_forward`, which costs microseconds
where a rebuild costs ~0.25 s. The base is kinematic: the environment sets its planar pose (slide x, slide y,
hinge yaw) and MuJoCo's collision detection says whether it overlaps a box, the bottle or a wall.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import weakref

import numpy as np

from mobile_vla.sim._gl import ensure_gl_backend
from mobile_vla.sim.layouts import ROBOT_RADIUS, Layout

ensure_gl_backend()
import mujoco  # noqa: E402  (MUJOCO_GL must be set before the first import)

MAX_BOXES = 2
MAX_IMAGE_SIDE = 1280
ROOM = (-1.0, 4.0, -2.0, 2.0)  # xmin, xmax, ymin, ymax of the room's inside (m)
_HIDDEN = (0.0, 0.0, -5.0)  # unused boxes wait under the floor

_WALL_HEIGHT = 1.2
_WALL_HALF_THICKNESS = 0.05


def _walls_xml() -> str:
    x0, x1, y0, y1 = ROOM
    t, h = _WALL_HALF_THICKNESS, _WALL_HEIGHT / 2
    cx, cy, hx, hy = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2 + 2 * t, (y1 - y0) / 2
    walls = [
        ("wall_front", cx, y1 + t, hx, t),
        ("wall_back", cx, y0 - t, hx, t),
        ("wall_far", x1 + t, cy, t, hy),
        ("wall_near", x0 - t, cy, t, hy),
    ]
    return "\n".join(
        f'    <geom name="{name}" type="box" pos="{x} {y} {h}" size="{sx} {sy} {h}" material="wall" '
        f'contype="0" conaffinity="1"/>'
        for name, x, y, sx, sy in walls
    )


def _boxes_xml() -> str:
    return "\n".join(
        f"""    <body name="box{i}" pos="{_HIDDEN[0]} {_HIDDEN[1]} {_HIDDEN[2]}">
      <geom name="box{i}" type="box" size="0.15 0.15 0.15" material="cardboard{i}" contype="0" conaffinity="1"/>
      <geom name="box{i}_tape" type="box" size="0.15 0.025 0.001" pos="0 0 0.15" rgba="0.62 0.48 0.30 1"
            contype="0" conaffinity="0"/>
    </body>"""
        for i in range(MAX_BOXES)
    )


def scene_xml(camera_height: float = 0.30, camera_tilt_deg: float = 20.0) -> str:
    """The scene's MJCF. Sizes and colours here are placeholders that `Scene.apply_layout` overwrites."""
    tilt = math.radians(camera_tilt_deg)
    # MuJoCo cameras look along their -z axis with +y up: x = robot's right, y = up tilted forward.
    up = f"{math.sin(tilt):.6f} 0 {math.cos(tilt):.6f}"
    r = ROBOT_RADIUS
    x0, x1, y0, y1 = ROOM
    return f"""<mujoco model="mobile_vla_lab">
  <compiler angle="radian"/>
  <option timestep="0.02"/>
  <visual>
    <global offwidth="{MAX_IMAGE_SIDE}" offheight="{MAX_IMAGE_SIDE}"/>
    <quality shadowsize="2048"/>
    <headlight ambient="0.3 0.3 0.3" diffuse="0.25 0.25 0.25" specular="0 0 0"/>
    <map znear="0.01" zfar="60" shadowclip="0.6"/>
  </visual>
  <asset>
    <texture name="floor" type="2d" builtin="checker" rgb1="0.64 0.61 0.56" rgb2="0.58 0.55 0.50"
             mark="edge" markrgb="0.42 0.41 0.38" width="256" height="256"/>
    <material name="floor" texture="floor" texrepeat="1.667 1.667" texuniform="true"/>
    <texture name="cardboard" type="2d" builtin="flat" rgb1="0.93 0.93 0.93" mark="random" random="0.08"
             markrgb="0.72 0.72 0.72" width="128" height="128"/>
    <material name="cardboard0" texture="cardboard" texrepeat="2 2" texuniform="true"/>
    <material name="cardboard1" texture="cardboard" texrepeat="2 2" texuniform="true"/>
    <material name="wall" rgba="0.86 0.86 0.83 1"/>
    <material name="robot" rgba="0.18 0.18 0.20 1"/>
  </asset>
  <worldbody>
    <light name="sun" directional="true" pos="0 0 3" dir="-0.3 0.25 -1" diffuse="0.55 0.55 0.55"
           ambient="0.3 0.3 0.3" specular="0.1 0.1 0.1" castshadow="true"/>
    <light name="ceiling" pos="{(x0 + x1) / 2} {(y0 + y1) / 2} 2.5" dir="0 0 -1" diffuse="0.2 0.2 0.2"
           castshadow="false" attenuation="1 0 0"/>
    <geom name="floor" type="plane" pos="{(x0 + x1) / 2} {(y0 + y1) / 2} 0"
          size="{(x1 - x0) / 2 + 0.2} {(y1 - y0) / 2 + 0.2} 0.1" material="floor" contype="0" conaffinity="0"/>
{_walls_xml()}
    <camera name="overview" pos="-0.9 0 2.6" xyaxes="0 -1 0 0.77 0 0.64" fovy="60"/>
    <body name="robot">
      <joint name="x" type="slide" axis="1 0 0"/>
      <joint name="y" type="slide" axis="0 1 0"/>
      <joint name="yaw" type="hinge" axis="0 0 1"/>
      <geom name="robot" type="cylinder" size="{r} 0.05" pos="0 0 0.07" material="robot"
            contype="1" conaffinity="0"/>
      <geom name="robot_mast" type="box" size="0.02 0.03 0.1" pos="{r - 0.04} 0 0.2" material="robot"
            contype="0" conaffinity="0"/>
      <geom name="robot_marker" type="box" size="0.05 0.02 0.002" pos="0.06 0 0.121" rgba="0.9 0.4 0.1 1"
            contype="0" conaffinity="0"/>
      <camera name="ego" pos="{r - 0.01} 0 {camera_height}" xyaxes="0 -1 0 {up}"/>
    </body>
{_boxes_xml()}
    <body name="bottle" pos="0 0 0">
      <geom name="bottle" type="cylinder" size="0.033 0.075" pos="0 0 0.075" rgba="0.25 0.12 0.06 0.92"
            contype="0" conaffinity="1"/>
      <geom name="bottle_label" type="cylinder" size="0.034 0.025" pos="0 0 0.085" rgba="0.85 0.08 0.1 1"
            contype="0" conaffinity="0"/>
      <geom name="bottle_shoulder" type="ellipsoid" size="0.033 0.033 0.025" pos="0 0 0.15"
            rgba="0.25 0.12 0.06 0.92" contype="0" conaffinity="0"/>
      <geom name="bottle_neck" type="cylinder" size="0.013 0.013" pos="0 0 0.18" rgba="0.8 0.85 0.9 0.6"
            contype="0" conaffinity="0"/>
      <geom name="bottle_cap" type="cylinder" size="0.015 0.008" pos="0 0 0.2" rgba="0.85 0.08 0.1 1"
            contype="0" conaffinity="0"/>
    </body>
  </worldbody>
</mujoco>
"""


_LIVE_SCENES: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_all_scenes() -> None:
    # GL contexts freed during interpreter teardown raise noisy errors (osmesa); free them while we still can
    for scene in list(_LIVE_SCENES):
        scene.close()


def _yaw_quat(yaw: float) -> np.ndarray:
    return np.array([math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)])


class Scene:
    """One compiled MuJoCo model of the lab, re-dressed per episode with `apply_layout`.

    `hfov_deg` and `sensor_aspect` describe the robot's camera (a 16:9 CSI camera): any requested image size
    shows that same field of view, stretched to the image's shape, as the lab's 1280x720 -> 224x224 resize does.
    """

    def __init__(
        self,
        camera_height: float = 0.30,
        camera_tilt_deg: float = 20.0,
        hfov_deg: float = 80.0,
        sensor_aspect: float = 16 / 9,
        shadows: bool = False,
    ):
        self.model = mujoco.MjModel.from_xml_string(scene_xml(camera_height, camera_tilt_deg))
        self.data = mujoco.MjData(self.model)
        m = self.model
        name = mujoco.mj_name2id
        self._robot_qpos = [m.jnt_qposadr[name(m, mujoco.mjtObj.mjOBJ_JOINT, j)] for j in ("x", "y", "yaw")]
        self.robot_geom = name(m, mujoco.mjtObj.mjOBJ_GEOM, "robot")
        self._box_bodies = [name(m, mujoco.mjtObj.mjOBJ_BODY, f"box{i}") for i in range(MAX_BOXES)]
        self._box_geoms = [name(m, mujoco.mjtObj.mjOBJ_GEOM, f"box{i}") for i in range(MAX_BOXES)]
        self._tape_geoms = [name(m, mujoco.mjtObj.mjOBJ_GEOM, f"box{i}_tape") for i in range(MAX_BOXES)]
        self._box_materials = [
            name(m, mujoco.mjtObj.mjOBJ_MATERIAL, f"cardboard{i}") for i in range(MAX_BOXES)
        ]
        self._floor_material = name(m, mujoco.mjtObj.mjOBJ_MATERIAL, "floor")
        self._bottle_body = name(m, mujoco.mjtObj.mjOBJ_BODY, "bottle")
        self._bottle_geoms = {
            part: name(m, mujoco.mjtObj.mjOBJ_GEOM, f"bottle_{part}" if part else "bottle")
            for part in ("", "label", "shoulder", "neck", "cap")
        }
        self._sun = name(m, mujoco.mjtObj.mjOBJ_LIGHT, "sun")
        self.ego_camera = name(m, mujoco.mjtObj.mjOBJ_CAMERA, "ego")
        self.overview_camera = name(m, mujoco.mjtObj.mjOBJ_CAMERA, "overview")
        self.geom_names = {i: mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_GEOM, i) for i in range(m.ngeom)}

        # A physical sensor with a focal length gives the same field of view at every image shape.
        sensor_w = 0.01
        focal = sensor_w / 2 / math.tan(math.radians(hfov_deg) / 2)
        m.cam_sensorsize[self.ego_camera] = (sensor_w, sensor_w / sensor_aspect)
        m.cam_intrinsic[self.ego_camera] = (focal, focal, 0.0, 0.0)
        if not shadows:
            m.light_castshadow[:] = 0
        self._renderers: dict[tuple[int, int], mujoco.Renderer] = {}
        self._scene_option = mujoco.MjvOption()
        self.set_pose(0.0, 0.0, 0.0)
        _LIVE_SCENES.add(self)

    # --- episode dressing ---------------------------------------------------------------------------

    def apply_layout(self, layout: Layout) -> None:
        """Place the boxes and the bottle, set their sizes and colours and the lighting."""
        m = self.model
        for i in range(MAX_BOXES):
            body, geom, tape = self._box_bodies[i], self._box_geoms[i], self._tape_geoms[i]
            if i >= len(layout.boxes):
                m.body_pos[body] = _HIDDEN
                continue
            box = layout.boxes[i]
            hx, hy, hz = box.half_size
            m.body_pos[body] = (box.x, box.y, hz)
            m.body_quat[body] = _yaw_quat(box.yaw)
            self._resize(geom, (hx, hy, hz))
            self._resize(tape, (hx + 0.001, min(0.025, hy / 3), 0.001))
            m.geom_pos[tape] = (0.0, 0.0, hz)
            m.mat_rgba[self._box_materials[i]] = box.rgba

        b, g = layout.bottle, self._bottle_geoms
        r, h = b.radius, b.height
        m.body_pos[self._bottle_body] = (b.x, b.y, 0.0)
        parts = {  # name: (size, centre height, rgba)
            "": ((r, 0.36 * h, 0), 0.36 * h, b.liquid_rgba),
            "label": ((r * 1.04, 0.12 * h, 0), 0.40 * h, (*b.label_rgb, 1.0)),
            "shoulder": ((r, r, 0.12 * h), 0.72 * h, b.liquid_rgba),
            "neck": ((0.42 * r, 0.06 * h, 0), 0.86 * h, (0.85, 0.9, 0.92, 0.55)),
            "cap": ((0.46 * r, 0.04 * h, 0), 0.96 * h, (*b.cap_rgb, 1.0)),
        }
        for part, (size, z, rgba) in parts.items():
            self._resize(g[part], size)
            m.geom_pos[g[part]] = (0.0, 0.0, z)
            m.geom_rgba[g[part]] = rgba

        light = layout.lighting
        warm = np.array([1.0, 0.93 - 0.1 * light.warmth, 0.85 - 0.25 * light.warmth])
        m.light_dir[self._sun] = light.direction
        m.light_diffuse[self._sun] = light.diffuse * warm
        m.light_ambient[self._sun] = light.ambient * warm
        m.mat_rgba[self._floor_material] = (*layout.floor_tint, 1.0)
        mujoco.mj_forward(m, self.data)

    def _resize(self, geom: int, size) -> None:
        """Set a geom's size and the bounding volumes collision detection culls with (compiled from sizes)."""
        m = self.model
        m.geom_size[geom] = size
        kind = m.geom_type[geom]
        if kind == mujoco.mjtGeom.mjGEOM_BOX or kind == mujoco.mjtGeom.mjGEOM_ELLIPSOID:
            half = np.asarray(size, dtype=float)
        else:  # cylinder: (radius, half height)
            half = np.array([size[0], size[0], size[1]], dtype=float)
        m.geom_aabb[geom] = (0.0, 0.0, 0.0, *half)
        m.geom_rbound[geom] = float(np.linalg.norm(half))

    # --- the robot ----------------------------------------------------------------------------------

    def set_pose(self, x: float, y: float, yaw: float) -> None:
        self.data.qpos[self._robot_qpos] = (x, y, yaw)
        mujoco.mj_forward(self.model, self.data)

    def contacts(self) -> list[str]:
        """Names of what the robot's base overlaps at the current pose (empty when free)."""
        names = []
        for k in range(self.data.ncon):
            contact = self.data.contact[k]
            if contact.dist < 0.0:
                other = contact.geom2 if contact.geom1 == self.robot_geom else contact.geom1
                names.append(self.geom_names[int(other)])
        return names

    # --- rendering ----------------------------------------------------------------------------------

    def _renderer(self, height: int, width: int) -> mujoco.Renderer:
        if not (0 < height <= MAX_IMAGE_SIDE and 0 < width <= MAX_IMAGE_SIDE):
            raise ValueError(
                f"image size {height}x{width} is out of range: height and width must be 1..{MAX_IMAGE_SIDE}"
            )
        key = (height, width)
        if key not in self._renderers:
            self._renderers[key] = mujoco.Renderer(self.model, height, width)
        return self._renderers[key]

    def render(self, height: int, width: int, camera: str = "ego") -> np.ndarray:
        """An RGB frame, uint8 [height, width, 3], from the robot's camera (or `overview`)."""
        renderer = self._renderer(height, width)
        camera_id = self.ego_camera if camera == "ego" else self.overview_camera
        renderer.update_scene(self.data, camera=camera_id, scene_option=self._scene_option)
        return renderer.render().copy()

    def close(self) -> None:
        for renderer in self._renderers.values():
            renderer.close()
        self._renderers.clear()

    def __del__(self):  # renderers hold GL contexts; free them with the scene
        with contextlib.suppress(Exception):
            self.close()
