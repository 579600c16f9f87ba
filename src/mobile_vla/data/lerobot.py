"""LeRobot datasets (codebase v3.0): write the lab's episodes as one, and read one as training episodes.

    info = export_lerobot("episodes/", "lerobot/mobile_vla")     # HDF5 episodes -> a LeRobotDataset directory
    episodes = read_lerobot_episodes("lerobot/mobile_vla")        # -> Episode objects (what --data reads)

The layout is LeRobot's v3.0 (``lerobot.datasets``: ``LeRobotDatasetMetadata``/``LeRobotDataset``):

    meta/info.json                               codebase_version "v3.0", fps, features (dtype, shape, names),
                                                 totals, splits, data_path/video_path templates, chunk sizes
    meta/stats.json                              per feature: min, max, mean, std, count, q01 ... q99
    meta/tasks.parquet                           index "task" (the instruction), column task_index
    meta/episodes/chunk-000/file-000.parquet     one row per episode: episode_index, tasks, length,
                                                 data/chunk_index, data/file_index, dataset_from_index,
                                                 dataset_to_index, meta/episodes/*, stats/<feature>/<stat>,
                                                 and ours under mobile_vla/* (episode id, attributes, events,
                                                 provenance, source file sha256, content digest)
    data/chunk-000/file-000.parquet              one row per frame: observation.images.front (PNG, embedded
                                                 as LeRobot does for image features), action, timestamp,
                                                 frame_index, episode_index, index, task_index

Choices, and why:
- Actions are named like LeRobot's omni-wheel base (LeKiwi): ``x.vel``, ``y.vel``, ``theta.vel`` for the lab's
  ``linear_x``, ``linear_y``, ``angular_z`` (the same command units: the teleop's +-1.15, not calibrated m/s).
- Frames are stored as PNG images, not mp4: lossless, so a round trip gives the same frames (and the same
  content fingerprint); mp4 would need a video encoder and changes the pixels. Reading video features is not
  supported here (no video decoder among the dependencies): such a dataset is refused with that reason.
- The lab's episodes are event-driven (a frame per key press), not fixed-rate. LeRobot needs an ``fps``;
  ``DEFAULT_FPS`` = 3 (the lab's inference node steps every 0.3 s) and ``timestamp = frame_index / fps``. The
  recorded ``total_duration`` and every other HDF5 attribute are kept in the episode's ``mobile_vla/attrs``.
- Tasks are the episodes' instructions (one task per episode).

``content_fingerprint`` hashes what training sees (episode ids, instructions, actions, decoded frames), not
file bytes, so the HDF5 episodes and their LeRobot copy give the same value.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import shutil
import sys
from collections.abc import Iterable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mobile_vla.data.episodes import ACTION_AXES, Episode

logger = logging.getLogger(__name__)

CODEBASE_VERSION = "v3.0"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DATA_PATH = "data/" + CHUNK_FILE + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE + ".mp4"
EPISODES_PATH = EPISODES_DIR + "/" + CHUNK_FILE + ".parquet"
CHUNKS_SIZE = 1000  # files per chunk directory (LeRobot's default)
DATA_FILE_SIZE_MB = 100  # a data file is closed once it would pass this (LeRobot's default)
VIDEO_FILE_SIZE_MB = 200
DEFAULT_FPS = 3
IMAGE_KEY = "observation.images.front"
ROBOT_TYPE = "mobile_vla_omni_base"
# LeRobot's omni-wheel base names its velocity command x.vel, y.vel, theta.vel.
AXIS_TO_LEROBOT = {"linear_x": "x.vel", "linear_y": "y.vel", "angular_z": "theta.vel"}
LEROBOT_TO_AXIS = {v: k for k, v in AXIS_TO_LEROBOT.items()} | {a: a for a in ACTION_AXES}
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
IMAGE_STATS_STRIDE = 8  # image statistics read every 8th pixel along each axis (a 720x1280 frame: 90x160)
DEFAULT_FEATURES = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}


class LeRobotFormatError(ValueError):
    """A LeRobot directory this toolkit cannot read (names the file and the key)."""


# ---- identity ---------------------------------------------------------------------------------------------


def episode_content_digest(episode: Episode) -> str:
    """sha256 of what training reads from an episode: its id, instruction, actions and decoded frames."""
    digest = hashlib.sha256()
    digest.update(episode.episode_id.encode())
    digest.update(b"\0" + episode.instruction.encode() + b"\0")
    actions = np.ascontiguousarray(episode.actions, dtype="<f4")  # (T, 3)
    digest.update(str(actions.shape).encode() + actions.tobytes())
    for i in range(episode.num_frames):
        frame = np.ascontiguousarray(episode.image(i), dtype=np.uint8)  # (H, W, 3)
        digest.update(str(frame.shape).encode() + frame.tobytes())
    return digest.hexdigest()


def content_fingerprint(episodes: Iterable[Episode]) -> str:
    """Fingerprint of a set of episodes from their content (not their files): the same for the HDF5
    episodes and their LeRobot copy. 16 hex characters, like ``dataset_fingerprint``."""
    digest = hashlib.sha256()
    for value in sorted(getattr(e, "content_digest", None) or episode_content_digest(e) for e in episodes):
        digest.update(value.encode())
    return digest.hexdigest()[:16]


# ---- statistics -------------------------------------------------------------------------------------------


def _stats(values: np.ndarray) -> dict[str, Any]:
    """LeRobot's per-feature statistics of ``values`` (N, D): lists of length D (count: [N])."""
    values = np.asarray(values, dtype=np.float64)
    out = {
        "min": values.min(axis=0).tolist(),
        "max": values.max(axis=0).tolist(),
        "mean": values.mean(axis=0).tolist(),
        "std": values.std(axis=0).tolist(),
        "count": [int(len(values))],
    }
    for q in QUANTILES:
        out[f"q{int(round(q * 100)):02d}"] = np.quantile(values, q, axis=0).tolist()
    return out


def _image_stats(frames: Sequence[np.ndarray]) -> dict[str, Any]:
    """Per-channel statistics in [0, 1], shaped (3, 1, 1) as LeRobot's image stats (strided pixels)."""
    pixels = np.concatenate(
        [f[::IMAGE_STATS_STRIDE, ::IMAGE_STATS_STRIDE].reshape(-1, 3) for f in frames]
    ).astype(np.float64)
    flat = _stats(pixels / 255.0)
    out: dict[str, Any] = {k: [[[v]] for v in flat[k]] for k in flat if k != "count"}
    out["count"] = [len(frames)]
    return out


def _aggregate(per_episode: list[dict[str, Any]]) -> dict[str, Any]:
    """Dataset statistics from per-episode ones: count-weighted mean and pooled std; quantiles averaged
    with the same weights (as LeRobot aggregates them)."""
    counts = np.array([s["count"][0] for s in per_episode], dtype=np.float64)
    weights = counts / counts.sum()
    arrays = {
        k: np.array([s[k] for s in per_episode], dtype=np.float64) for k in per_episode[0] if k != "count"
    }
    shape = (-1,) + (1,) * (arrays["mean"].ndim - 1)
    w = weights.reshape(shape)
    mean = (arrays["mean"] * w).sum(axis=0)
    var = ((arrays["std"] ** 2 + (arrays["mean"] - mean) ** 2) * w).sum(axis=0)
    out = {
        "min": arrays["min"].min(axis=0),
        "max": arrays["max"].max(axis=0),
        "mean": mean,
        "std": np.sqrt(var),
    }
    for key, value in arrays.items():
        if key.startswith("q"):
            out[key] = (value * w).sum(axis=0)
    result: dict[str, Any] = {k: v.tolist() for k, v in out.items()}
    result["count"] = [int(counts.sum())]
    return result


# ---- writing ----------------------------------------------------------------------------------------------


def _png(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _next_file(chunk: int, file: int) -> tuple[int, int]:
    return (chunk + 1, 0) if file + 1 >= CHUNKS_SIZE else (chunk, file + 1)


def export_lerobot(
    data: str | Path | Sequence[Episode],
    out_dir: str | Path,
    *,
    fps: int = DEFAULT_FPS,
    robot_type: str = ROBOT_TYPE,
    image_key: str = IMAGE_KEY,
    data_file_size_mb: float = DATA_FILE_SIZE_MB,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the episodes of ``data`` (a directory of HDF5 episodes, or ``Episode`` objects) as a LeRobot v3.0
    dataset in ``out_dir``; returns ``meta/info.json``. Invalid episode files are skipped with a logged
    error (as in training) and listed in ``info["mobile_vla"]["skipped"]``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mobile_vla.data.dataset import load_episodes

    if not isinstance(fps, int) or fps <= 0:
        raise ValueError(f"fps must be a positive integer (LeRobot's info.json), got {fps!r}")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ValueError(f"--out {out_dir} exists and is not empty; choose another directory or --overwrite")
    if isinstance(data, (str, Path)):
        episodes, skipped = load_episodes(data)
    else:
        episodes, skipped = list(data), []
    if not episodes:
        raise ValueError(f"no readable episodes in {data}")
    episodes = sorted(episodes, key=lambda e: e.episode_id)
    sizes = {e.image_size for e in episodes}
    if len(sizes) != 1:
        raise ValueError(
            f"LeRobot features have one shape: these episodes have frames of sizes {sorted(sizes)} (height, "
            "width); export each size separately"
        )
    height, width = sizes.pop()

    tasks: dict[str, int] = {}
    for episode in episodes:
        tasks.setdefault(episode.instruction, len(tasks))
    action_names = [AXIS_TO_LEROBOT[a] for a in ACTION_AXES]
    features = {
        image_key: {"dtype": "image", "shape": [height, width, 3], "names": ["height", "width", "channels"]},
        "action": {"dtype": "float32", "shape": [len(ACTION_AXES)], "names": action_names},
        **DEFAULT_FEATURES,
    }
    schema = pa.schema(
        [
            (image_key, pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
            ("action", pa.list_(pa.float32(), len(ACTION_AXES))),
            ("timestamp", pa.float32()),
            ("frame_index", pa.int64()),
            ("episode_index", pa.int64()),
            ("index", pa.int64()),
            ("task_index", pa.int64()),
        ]
    )
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    rows: list[dict[str, Any]] = []
    stats: dict[str, list[dict[str, Any]]] = {name: [] for name in features}
    chunk, file, file_bytes, writer = 0, 0, 0, None
    total = 0
    try:
        for episode_index, episode in enumerate(episodes):
            frames = [np.asarray(episode.image(i), dtype=np.uint8) for i in range(episode.num_frames)]
            pngs = [_png(f) for f in frames]
            size = sum(len(p) for p in pngs)
            if writer is not None and file_bytes + size > data_file_size_mb * 2**20:
                writer.close()
                chunk, file = _next_file(chunk, file)
                writer, file_bytes = None, 0
            if writer is None:
                path = partial / DATA_PATH.format(chunk_index=chunk, file_index=file)
                path.parent.mkdir(parents=True, exist_ok=True)
                writer = pq.ParquetWriter(path, schema, compression="snappy")
            n = episode.num_frames
            frame_index = np.arange(n, dtype=np.int64)
            timestamp = (frame_index / fps).astype(np.float32)
            index = np.arange(total, total + n, dtype=np.int64)
            task_index = np.full(n, tasks[episode.instruction], dtype=np.int64)
            actions = np.asarray(episode.actions, dtype=np.float32)  # (T, 3)
            table = pa.table(
                {
                    image_key: pa.array(
                        [{"bytes": p, "path": None} for p in pngs], type=schema.field(0).type
                    ),
                    "action": pa.FixedSizeListArray.from_arrays(
                        pa.array(actions.reshape(-1)), len(ACTION_AXES)
                    ),
                    "timestamp": timestamp,
                    "frame_index": frame_index,
                    "episode_index": np.full(n, episode_index, dtype=np.int64),
                    "index": index,
                    "task_index": task_index,
                },
                schema=schema,
            )
            writer.write_table(table)  # one row group per episode: a frame read touches one episode
            file_bytes += size
            episode_stats = {
                image_key: _image_stats(frames),
                "action": _stats(actions),
                "timestamp": _stats(timestamp[:, None]),
                "frame_index": _stats(frame_index[:, None]),
                "episode_index": _stats(np.full((n, 1), episode_index)),
                "index": _stats(index[:, None]),
                "task_index": _stats(task_index[:, None]),
            }
            for name, value in episode_stats.items():
                stats[name].append(value)
            row: dict[str, Any] = {
                "episode_index": episode_index,
                "tasks": [episode.instruction],
                "length": n,
                "data/chunk_index": chunk,
                "data/file_index": file,
                "dataset_from_index": total,
                "dataset_to_index": total + n,
                "meta/episodes/chunk_index": 0,
                "meta/episodes/file_index": 0,
            }
            for name, value in episode_stats.items():
                for stat, v in value.items():
                    row[f"stats/{name}/{stat}"] = v
            row.update(
                {
                    "mobile_vla/episode_id": episode.episode_id,
                    "mobile_vla/scenario": episode.scenario.full_name if episode.scenario else None,
                    "mobile_vla/provenance": episode.provenance,
                    "mobile_vla/event_types": list(episode.event_types),
                    "mobile_vla/attrs": json.dumps(_jsonable(episode.attrs), sort_keys=True),
                    "mobile_vla/source_sha256": episode.content_hash,
                    "mobile_vla/content_sha256": episode_content_digest(episode),
                }
            )
            rows.append(row)
            total += n
            if progress:
                print(
                    f"[export-lerobot] {episode_index + 1}/{len(episodes)} {episode.episode_id}",
                    file=sys.stderr,
                )
        if writer is not None:
            writer.close()
            writer = None

        episodes_path = partial / EPISODES_PATH.format(chunk_index=0, file_index=0)
        episodes_path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), episodes_path)
        import pandas as pd

        task_frame = pd.DataFrame(
            {"task_index": list(tasks.values())}, index=pd.Index(list(tasks), name="task")
        )
        task_frame.to_parquet(partial / TASKS_PATH)
        dataset_stats = {name: _aggregate(values) for name, values in stats.items()}
        (partial / STATS_PATH).write_text(json.dumps(dataset_stats, indent=4) + "\n")
        digests = [r["mobile_vla/content_sha256"] for r in rows]
        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": robot_type,
            "total_episodes": len(episodes),
            "total_frames": total,
            "total_tasks": len(tasks),
            "chunks_size": CHUNKS_SIZE,
            "data_files_size_in_mb": int(data_file_size_mb)
            if float(data_file_size_mb).is_integer()
            else data_file_size_mb,
            "video_files_size_in_mb": VIDEO_FILE_SIZE_MB,
            "fps": fps,
            "splits": {"train": f"0:{len(episodes)}"},
            "data_path": DATA_PATH,
            "video_path": None,
            "features": features,
            "mobile_vla": {
                "source": str(data) if isinstance(data, (str, Path)) else None,
                "content_fingerprint": _fingerprint_of(digests),
                "action_axes": dict(AXIS_TO_LEROBOT),
                "fps_note": "the lab's episodes are a frame per key press; timestamp = frame_index / fps",
                "skipped": [[str(p), str(r)] for p, r in skipped],
            },
        }
        (partial / INFO_PATH).write_text(json.dumps(info, indent=4) + "\n")
    except BaseException:
        if writer is not None:
            writer.close()
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if out_dir.exists():
        shutil.rmtree(out_dir)
    partial.rename(out_dir)
    return info


def _fingerprint_of(digests: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for value in sorted(digests):
        digest.update(value.encode())
    return digest.hexdigest()[:16]


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value


# ---- reading ----------------------------------------------------------------------------------------------


def is_lerobot_dir(path: str | Path) -> bool:
    """A directory with ``meta/info.json`` (what LeRobot reads first)."""
    return (Path(path) / INFO_PATH).is_file()


def looks_like_lerobot_dir(path: str | Path) -> bool:
    """A directory laid out like a LeRobot dataset (``meta/`` or ``data/chunk-*``), with or without info.json."""
    path = Path(path)
    return path.is_dir() and ((path / "meta").is_dir() or any((path / "data").glob("chunk-*")))


def read_info(root: str | Path) -> dict[str, Any]:
    """``meta/info.json``, checked: a named error for a missing file, another codebase version, a missing key."""
    root = Path(root)
    path = root / INFO_PATH
    if not path.is_file():
        raise FileNotFoundError(
            f"{root} is not a LeRobot dataset: {INFO_PATH} is missing (LeRobot v3.0 datasets start with it; "
            "write one with `mobile-vla data export-lerobot`)"
        )
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise LeRobotFormatError(f"{path} is not valid JSON: {exc}") from None
    for key in ("codebase_version", "fps", "features", "data_path"):
        if key not in info:
            raise LeRobotFormatError(f"{path}: missing key {key!r}")
    version = str(info["codebase_version"])
    if not version.startswith("v3."):
        raise LeRobotFormatError(
            f"{path}: codebase_version {version!r}; this reader takes LeRobot v3.x datasets (convert a v2.1 one "
            "with LeRobot's `python -m lerobot.datasets.v30.convert_dataset_v21_to_v30`)"
        )
    return info


def _pick_image_key(info: dict[str, Any], path: Path, image_key: str | None) -> str:
    features = info["features"]
    if image_key is not None:
        if image_key not in features:
            raise LeRobotFormatError(f"{path}: features has no {image_key!r} (has {sorted(features)})")
        candidates = [image_key]
    else:
        candidates = [k for k, f in features.items() if f.get("dtype") in ("image", "video")]
        if not candidates:
            raise LeRobotFormatError(
                f"{path}: features has no image or video feature (has {sorted(features)})"
            )
    key = IMAGE_KEY if IMAGE_KEY in candidates else candidates[0]
    if features[key].get("dtype") == "video":
        raise LeRobotFormatError(
            f"{path}: features.{key} is a video (mp4); reading video frames needs a video decoder that this "
            "toolkit does not install. Use a dataset with image features (`export-lerobot` writes PNG frames)"
        )
    if features[key].get("dtype") != "image":
        raise LeRobotFormatError(
            f"{path}: features.{key} has dtype {features[key].get('dtype')!r}, not 'image'"
        )
    return key


def _action_columns(info: dict[str, Any], path: Path) -> list[int | None]:
    """For each of ``ACTION_AXES``, its column in the dataset's ``action`` (None: absent, read as 0)."""
    feature = info["features"].get("action")
    if feature is None:
        raise LeRobotFormatError(f"{path}: features has no 'action'")
    names = feature.get("names")
    if isinstance(names, dict):  # older datasets: {"motors": [...]}
        names = next(iter(names.values()), None)
    if not names:
        raise LeRobotFormatError(f"{path}: features.action.names is empty; cannot tell which axis is which")
    unknown = [n for n in names if n not in LEROBOT_TO_AXIS]
    if unknown:
        raise LeRobotFormatError(
            f"{path}: features.action.names {list(names)} has {unknown}, which are not mobile-base velocities; "
            f"expected some of {sorted(AXIS_TO_LEROBOT.values())} (or {list(ACTION_AXES)})"
        )
    axes = [LEROBOT_TO_AXIS[n] for n in names]
    return [axes.index(a) if a in axes else None for a in ACTION_AXES]


@functools.lru_cache(maxsize=4)
def _episode_frames(data_file: str, image_key: str, episode_index: int) -> tuple[bytes, ...]:
    """The encoded frames of one episode, in frame order (a small cache: consecutive frames share a read)."""
    import pyarrow.parquet as pq

    table = pq.read_table(
        data_file, columns=[image_key, "frame_index"], filters=[("episode_index", "=", episode_index)]
    )
    order = np.argsort(np.asarray(table.column("frame_index").to_numpy()))
    images = table.column(image_key).to_pylist()
    return tuple(images[i]["bytes"] for i in order)


class LeRobotEpisode(Episode):
    """One episode of a LeRobot dataset, with the interface of an HDF5 ``Episode`` (frames read lazily).

    Written by ``export_lerobot``, it gets back its episode id, scenario, provenance, event types and
    attributes; a dataset from elsewhere gets ``episode_{index:06d}``, its task as instruction, ``real``.
    ``content_hash`` is the content digest (ids, instruction, actions, decoded frames), so feature caches and
    ``dataset_fingerprint`` follow the content, whatever the format.
    """

    def __init__(
        self,
        root: Path,
        row: dict[str, Any],
        actions: np.ndarray,
        data_file: Path,
        image_key: str,
        image_size: tuple[int, int],
    ) -> None:  # Episode.__init__ reads an HDF5 file: not called
        self.root = root
        self.index = int(row["episode_index"])
        self._id = str(row.get("mobile_vla/episode_id") or f"episode_{self.index:06d}")
        self.path = data_file  # where the frames are (error messages, FrameRef)
        self.layout = "lerobot"
        self.image_encoding = "png"
        self._image_key = image_key
        self._num_frames = int(row["length"])
        self._raw_shape = image_size
        self.actions = actions
        events = row.get("mobile_vla/event_types")
        self.event_types = (
            list(events) if events else ["episode_start"] + ["start_action"] * (self._num_frames - 1)
        )
        tasks = row.get("tasks") or []
        self._stored_instruction = str(tasks[0]) if tasks else None
        attrs = row.get("mobile_vla/attrs")
        self.attrs = json.loads(attrs) if attrs else {}
        if row.get("mobile_vla/provenance"):
            self.attrs.setdefault("provenance", row["mobile_vla/provenance"])
        self._scenario_name = row.get("mobile_vla/scenario")
        self.stored_action_classes = None
        self.stored_content_digest = row.get("mobile_vla/content_sha256")

    @property
    def episode_id(self) -> str:
        return self._id

    @cached_property
    def scenario(self):
        from mobile_vla.data.scenarios import match_scenario

        return match_scenario(f"{self._scenario_name or self._id}.h5")

    @cached_property
    def content_digest(self) -> str:
        return episode_content_digest(self)

    @cached_property
    def content_hash(self) -> str:
        return self.content_digest

    def image(self, index: int) -> np.ndarray:
        if not -self.num_frames <= index < self.num_frames:
            raise IndexError(f"{self.path}: frame {index} out of range (episode has {self.num_frames})")
        frames = _episode_frames(str(self.path), self._image_key, self.index)
        if len(frames) != self.num_frames:
            raise LeRobotFormatError(
                f"{self.path}: episode {self.index} has {len(frames)} frames, meta/episodes says {self.num_frames}"
            )
        with Image.open(io.BytesIO(frames[index])) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)

    def __repr__(self) -> str:
        return f"LeRobotEpisode({self._id!r}, index={self.index}, frames={self.num_frames}, root={self.root})"


def read_lerobot_episodes(root: str | Path, *, image_key: str | None = None) -> list[LeRobotEpisode]:
    """The episodes of a LeRobot v3 dataset directory (image features), as ``Episode`` objects."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(root)
    info = read_info(root)
    info_path = root / INFO_PATH
    key = _pick_image_key(info, info_path, image_key)
    height, width = (int(v) for v in info["features"][key]["shape"][:2])
    columns = _action_columns(info, info_path)
    episode_files = sorted((root / EPISODES_DIR).glob("*/*.parquet"))
    if not episode_files:
        raise FileNotFoundError(f"{root}: no {EPISODES_DIR}/chunk-*/file-*.parquet (the episode index)")
    meta = pa.concat_tables([pq.read_table(p) for p in episode_files], promote_options="default")
    wanted = [c for c in meta.column_names if not c.startswith("stats/")]
    rows = sorted(meta.select(wanted).to_pylist(), key=lambda r: r["episode_index"])
    for name in ("episode_index", "length", "data/chunk_index", "data/file_index"):
        if name not in meta.column_names:
            raise LeRobotFormatError(f"{episode_files[0]}: missing column {name!r}")
    episodes: list[LeRobotEpisode] = []
    by_file: dict[Path, list[dict[str, Any]]] = {}
    for row in rows:
        path = root / info["data_path"].format(
            chunk_index=int(row["data/chunk_index"]), file_index=int(row["data/file_index"])
        )
        by_file.setdefault(path, []).append(row)
    for path, file_rows in by_file.items():
        if not path.is_file():
            raise FileNotFoundError(f"{root}: {path.relative_to(root)} is missing (named by {EPISODES_DIR})")
        table = pq.read_table(path, columns=["episode_index", "frame_index", "action"])
        ep = table.column("episode_index").to_numpy()
        frame = table.column("frame_index").to_numpy()
        action = np.asarray(table.column("action").to_pylist(), dtype=np.float32)  # (N, D)
        for row in file_rows:
            mask = ep == int(row["episode_index"])
            order = np.argsort(frame[mask])
            raw = action[mask][order]
            if len(raw) != int(row["length"]) or not np.array_equal(frame[mask][order], np.arange(len(raw))):
                raise LeRobotFormatError(
                    f"{path}: episode {row['episode_index']} has frames {sorted(frame[mask].tolist())[:5]}... "
                    f"({len(raw)}), meta/episodes says length {row['length']}"
                )
            actions = np.zeros((len(raw), len(ACTION_AXES)), dtype=np.float32)
            for axis, column in enumerate(columns):
                if column is not None:
                    actions[:, axis] = raw[:, column]
            episodes.append(LeRobotEpisode(root, row, actions, path, key, (height, width)))
    ids = [e.episode_id for e in episodes]
    if len(set(ids)) != len(ids):
        raise LeRobotFormatError(f"{root}: repeated episode ids in mobile_vla/episode_id: {sorted(ids)[:5]}")
    return episodes
