"""Moved to ``mobile_vla.metrics``; this old import path stays an alias of it (the same module object) (the README documents ``mobile_vla.evaluation.metrics.compute_metrics``)."""

import sys

import mobile_vla.metrics as _moved

sys.modules[__name__] = _moved
