"""Moved to ``mobile_vla.runs.checkpoints``; this old import path stays an alias of it (the same module object)."""

import sys

import mobile_vla.runs.checkpoints as _moved

sys.modules[__name__] = _moved
