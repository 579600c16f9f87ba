"""Moved to ``mobile_vla.features.cached``; this old import path stays an alias of it (the same module object)."""

import sys

import mobile_vla.features.cached as _moved

sys.modules[__name__] = _moved
