"""``code_version``: which code produced a run (package version, git commit and dirtiness of the checkout).

One implementation, two spellings: ``code_version()`` is the registry's dict, ``code_version_string()`` the
``"0.1.0+abc1234"`` form the trainer writes into ``config.json`` (the registry's ``parse_code_version`` reads
both back).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any


def code_version() -> dict[str, Any]:
    """``{"package", "git_commit", "git_dirty"}``; the git fields are None outside a git checkout."""
    from mobile_vla import __version__

    info: dict[str, Any] = {"package": __version__, "git_commit": None, "git_dirty": None}
    here = Path(__file__).parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        if commit.returncode == 0 and commit.stdout.strip():
            info["git_commit"] = commit.stdout.strip()
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=here,
                capture_output=True,
                text=True,
                timeout=5,
            )
            info["git_dirty"] = bool(dirty.stdout.strip()) if dirty.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def code_version_string(info: dict[str, Any] | None = None) -> str:
    """The package version plus the short git commit, ``"0.1.0+abc1234"`` (just the version outside git)."""
    info = code_version() if info is None else info
    commit = info.get("git_commit")
    return f"{info['package']}+{commit[:7]}" if commit else str(info["package"])
