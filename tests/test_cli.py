"""Every sub-command answers --help."""

import subprocess
import sys

import pytest

from mobile_vla.cli import build_parser


def _subcommand_paths():
    parser = build_parser()
    paths = []

    def walk(p, prefix):
        for action in p._actions:
            if action.__class__.__name__ == "_SubParsersAction":
                for name, sub in action.choices.items():
                    paths.append([*prefix, name])
                    walk(sub, [*prefix, name])

    walk(parser, [])
    return paths


def test_top_level_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "mobile_vla.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "COMMAND" in out.stdout


@pytest.mark.parametrize("path", _subcommand_paths(), ids=lambda p: " ".join(p))
def test_every_subcommand_has_help(path, capsys):
    parser = build_parser()
    with pytest.raises(SystemExit) as exc:
        parser.parse_args([*path, "--help"])
    assert exc.value.code == 0
    assert "usage:" in capsys.readouterr().out
