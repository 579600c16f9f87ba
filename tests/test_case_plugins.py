"""Adding a case is one file: a case module in a user's own package (declared in the ``mobile_vla.cases``
entry-point group) is discovered by ``describe`` and trained by ``train``, in a fresh process, with no edit to
mobile-vla."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import torch
from fake_backbone import write_tiny_dataset

from mobile_vla.policies import registry

ROOT = Path(__file__).resolve().parents[1]

CASE_FILE = textwrap.dedent(
    """
    import dataclasses

    import torch

    from mobile_vla.policies import CaseSpec, Policy, register_case
    from mobile_vla.policies.case1 import Simplified2DConfig


    @dataclasses.dataclass
    class LinearConfig(Simplified2DConfig):
        pass


    class LinearPolicy(Policy):
        config_class = LinearConfig

        def __init__(self, config, dims):
            super().__init__(config, dims)
            self.fc = torch.nn.Linear(self.dims.vision + self.dims.text, config.action_dim)

        def forward(self, features):
            return {"action": self.fc(torch.cat([features["vision"], features["text"]], dim=-1))}


    @register_case("plugin_linear", aliases=("PluginLinearModel",))
    def plugin_linear() -> CaseSpec:
        return CaseSpec(policy_class=LinearPolicy, config=LinearConfig(), description="a user's linear head")
    """
)


def _user_package(root: Path) -> Path:
    """``my_vla_cases/linear.py`` plus the metadata pip would write for ``[project.entry-points."mobile_vla.cases"]``."""
    (root / "my_vla_cases").mkdir(parents=True)
    (root / "my_vla_cases" / "__init__.py").write_text("")
    (root / "my_vla_cases" / "linear.py").write_text(CASE_FILE)
    dist = root / "my_vla_cases-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-vla-cases\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[mobile_vla.cases]\nplugin_linear = my_vla_cases.linear\n")
    return root


def _cli(args: list[str], user: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(user), str(ROOT / "src")]), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "mobile_vla.cli", *args], capture_output=True, text=True, env=env, timeout=600
    )


def test_a_case_file_in_a_user_package_is_described_and_trained(tmp_path):
    user = _user_package(tmp_path / "user")
    listed = _cli(["describe", "--list"], user)
    assert listed.returncode == 0, listed.stderr
    names = [line.split()[0] for line in listed.stdout.splitlines() if line.strip()]
    assert names == ["case1", "case2", "case3", "case4", "plugin_linear"]

    described = _cli(["describe", "PluginLinearModel", "--backbone", "kosmos2-tiny", "--json"], user)
    assert described.returncode == 0, described.stderr
    info = json.loads(described.stdout)
    assert info["case"] == "plugin_linear" and info["architecture"] == "LinearPolicy"
    assert info["trainable_parameters"] > 0

    data = tmp_path / "episodes"
    write_tiny_dataset(data, episodes=6, image_size=(24, 32))
    run = tmp_path / "run"
    trained = _cli(
        [
            "train",
            "--case",
            "plugin_linear",
            "--data",
            str(data),
            "--backbone",
            "kosmos2-tiny",
            "--out",
            str(run),
        ]
        + ["--epochs", "1", "--batch-size", "4", "--frame-selection", "first", "--device", "cpu"]
        + ["--no-progress", "--no-track"],
        user,
    )
    assert trained.returncode == 0, trained.stderr
    config = json.loads((run / "config.json").read_text())
    assert config["case"] == "plugin_linear" and config["architecture"] == "LinearPolicy"
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"
    assert (run / "best.safetensors").is_file()


def test_the_same_file_registers_in_process_and_unregisters(tmp_path, monkeypatch):
    import importlib

    from mobile_vla.policies import FeatureDims, create_policy

    monkeypatch.syspath_prepend(str(_user_package(tmp_path / "user")))
    importlib.import_module("my_vla_cases.linear")
    try:
        policy = create_policy("PluginLinearModel", FeatureDims(vision=4, text=4))
        assert policy.case_name == "plugin_linear" and "plugin_linear" in registry.available_cases()
        assert policy({"vision": torch.zeros(2, 4), "text": torch.zeros(2, 4)})["action"].shape == (2, 2)
    finally:
        registry.unregister_case("plugin_linear")
        for name in ("my_vla_cases.linear", "my_vla_cases"):
            monkeypatch.delitem(sys.modules, name, raising=False)
    assert "plugin_linear" not in registry.available_cases()


def test_a_case_module_that_fails_to_import_is_an_error_naming_it(monkeypatch):
    broken = EntryPoint(name="broken", value="no_such_vla_case_module", group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "entry_points", lambda group: [broken] if group == broken.group else [])
    monkeypatch.setattr(registry, "_loaded", False)
    assert registry.case_modules()[-1] == "no_such_vla_case_module"
    with pytest.raises(registry.CaseDiscoveryError, match="no_such_vla_case_module"):
        registry.discover_cases()


def test_the_builtin_cases_are_found_by_their_file_names():
    assert registry.case_modules() == [f"mobile_vla.policies.case{i}" for i in range(1, 5)]
