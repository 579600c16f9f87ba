"""Moved to ``mobile_vla.features.providers``; this old import path stays an alias of it (the same module object)."""

import sys

import mobile_vla.features.providers as _moved

sys.modules[__name__] = _moved
