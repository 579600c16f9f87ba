"""The features layer: what turns images and instructions into the tensors a head consumes.

``providers`` (``FeatureProvider``, the one place features are computed, and the named ``FeatureSource``
table), ``cached`` (``CachedFeatureProvider``: the same features through the on-disk ``data.cache``), ``dims``
(``FeatureDims``). It sits above ``data`` and ``backbones`` and below ``policies``; training, evaluation,
inference and serving all get their features here, so they compute them the same way.
"""

from mobile_vla.features.cached import CachedFeatureProvider, feature_provider_for
from mobile_vla.features.dims import FeatureDims
from mobile_vla.features.providers import (
    FEATURE_SOURCES,
    HISTORY_FEATURES,
    FeatureProvider,
    FeatureSource,
    register_feature_source,
    to_pil,
)

__all__ = [
    "FEATURE_SOURCES",
    "HISTORY_FEATURES",
    "CachedFeatureProvider",
    "FeatureDims",
    "FeatureProvider",
    "FeatureSource",
    "feature_provider_for",
    "register_feature_source",
    "to_pil",
]
