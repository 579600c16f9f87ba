"""Test-wide settings: never touch a model hub, never send telemetry, render headless."""

import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
# What the CLI sets for its commands (mobile_vla.cli.MLFLOW_ENVIRONMENT); in-process registry tests get it too.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ["DO_NOT_TRACK"] = "1"
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Commands that record runs write to $MOBILE_VLA_HOME/mlruns: never the repository during tests.
os.environ["MOBILE_VLA_HOME"] = tempfile.mkdtemp(prefix="mobile-vla-tests-")
os.environ["MOBILE_VLA_CACHE"] = tempfile.mkdtemp(prefix="mobile-vla-cache-")
os.environ.pop("MLFLOW_TRACKING_URI", None)

# Small tensors are far slower with 2 threads than 1 when the cores are shared (tests run beside
# subprocesses they start); one thread keeps timings sane and results identical.
import torch  # noqa: E402

torch.set_num_threads(1)
