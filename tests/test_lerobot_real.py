"""The LeRobot layout checked with the real `lerobot` package, both ways (slow: it installs lerobot from PyPI).

lerobot is installed with `--no-deps` into a throwaway virtual environment that sees this environment's
packages (our CPU torch among them), so nothing pulls a CUDA torch. lerobot 0.4.4 is the last release for
Python 3.11 and writes/reads codebase v3.0. Its own dataset dependencies are real packages too (`datasets`,
`huggingface-hub` in the versions lerobot pins, `av`); only torchvision is a stand-in, because PyPI has no CPU
wheel of it for this torch: see tests/lerobot_env/torchvision_standin.py for what it provides and why.

1. `LeRobotDataset` (the real class) opens what `mobile-vla data export-lerobot` wrote: frames, actions,
   tasks, timestamps and metadata are what the HDF5 episodes hold.
2. `LeRobotDataset.create(...).add_frame/save_episode` writes a dataset; `read_lerobot_episodes` reads it back
   exactly.
If lerobot cannot be installed (no PyPI), the test fails saying so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from mobile_vla.cli import main
from mobile_vla.data.dataset import load_episodes
from mobile_vla.data.lerobot import read_lerobot_episodes
from mobile_vla.data.synthetic import write_synthetic_dataset

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent / "lerobot_env"
LEROBOT = "lerobot==0.4.4"
# What lerobot 0.4.4 pins for its dataset code (its METADATA): datasets<5,>=4, huggingface-hub<0.36,>=0.34.2,
# av<16,>=15.
DEPENDENCIES = ["datasets>=4.0,<5", "huggingface-hub>=0.34.2,<0.36", "av>=15,<16"]


def lerobot_python() -> Path:
    """A throwaway venv with lerobot (no deps) on top of this environment's packages; made once, reused."""
    default = Path.home() / ".cache" / "mobile_vla" / "lerobot-0.4.4-venv"
    venv = Path(os.environ.get("MOBILE_VLA_LEROBOT_VENV", default))
    python = venv / "bin" / "python"
    marker = venv / ".mobile-vla-ready"
    if marker.is_file() and python.is_file():
        return python

    def run(*argv: str) -> None:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=1200)
        if result.returncode != 0:
            pytest.fail(f"cannot set up the LeRobot environment: {' '.join(argv)}:\n{result.stderr[-3000:]}")

    run(sys.executable, "-m", "venv", "--clear", str(venv))
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    )  # fmt: skip
    # This environment's packages (torch CPU, numpy, pyarrow, pandas, PIL ...) after the venv's own.
    (site / "mobile-vla-env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(str(python), "-m", "pip", "install", "-q", "--no-deps", LEROBOT)
    run(str(python), "-m", "pip", "install", "-q", *DEPENDENCIES[:2])
    run(str(python), "-m", "pip", "install", "-q", "--no-deps", DEPENDENCIES[2])
    sys.path.insert(0, str(HERE))
    from torchvision_standin import install

    install(site)
    check = subprocess.run(
        [str(python), "-c", "import torch, lerobot.datasets.lerobot_dataset as d; print(torch.__version__, d.CODEBASE_VERSION)"],
        capture_output=True, text=True,
    )  # fmt: skip
    if check.returncode != 0 or "+cpu" not in check.stdout:
        pytest.fail(
            f"the LeRobot environment does not import with the CPU torch:\n{check.stdout}{check.stderr[-3000:]}"
        )
    marker.write_text(check.stdout)
    return python


def test_the_real_lerobot_reads_our_export_and_we_read_what_it_writes(tmp_path):
    python = lerobot_python()
    write_synthetic_dataset(tmp_path / "h5", episodes=5, seed=4, image_size=(24, 32))
    assert (
        main(
            ["data", "export-lerobot", str(tmp_path / "h5"), "--out", str(tmp_path / "ours"), "--no-progress"]
        )
        == 0
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_LEROBOT_HOME": str(tmp_path / "lerobot-home")}
    result = subprocess.run(
        [str(python), str(HERE / "check_with_lerobot.py"), str(tmp_path / "ours"), str(tmp_path / "theirs"),
         str(tmp_path / "report.json")],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["codebase_version"] == "v3.0"

    episodes = sorted(load_episodes(tmp_path / "h5")[0], key=lambda e: e.episode_id)
    read = report["read"]
    assert read["num_episodes"] == 5 and read["num_frames"] == 5 * 18 and read["fps"] == 3
    assert read["camera_keys"] == ["observation.images.front"]
    assert read["action_names"] == ["x.vel", "y.vel", "theta.vel"]
    assert read["tasks"] == sorted({e.instruction for e in episodes})
    assert read["episode_lengths"] == [18] * 5
    assert {"action", "observation.images.front"} <= set(read["stats_keys"])
    for item in read["items"]:
        episode = episodes[item["episode_index"]]
        frame = item["frame_index"]
        assert item["index"] == 18 * item["episode_index"] + frame
        assert item["task"] == episode.instruction
        assert item["timestamp"] == pytest.approx(frame / 3)
        np.testing.assert_allclose(item["action"], episode.actions[frame], atol=1e-7)
        np.testing.assert_array_equal(np.asarray(item["image_hwc_uint8"]), episode.image(frame))

    ours = read_lerobot_episodes(tmp_path / "theirs")
    assert len(ours) == len(report["written"]) == 2
    for episode, written in zip(ours, report["written"], strict=True):
        assert episode.instruction == written["task"] and episode.num_frames == len(written["frames"])
        for i, frame in enumerate(written["frames"]):
            np.testing.assert_array_equal(episode.image(i), np.asarray(frame["image"], dtype=np.uint8))
            np.testing.assert_allclose(episode.actions[i], frame["action"], atol=1e-7)
