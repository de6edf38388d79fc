"""BLO-SAM bundle: bi-level fine-tuning of Segment Anything for few-shot medical segmentation.

Configs reach everything as ``bundle.<module>.<name>`` after ``"$import bundle"``.
"""

from bundle.errors import BundleInputError, install_excepthook

# Before the subpackages: an error while importing them is reported in one line too.
install_excepthook()

from bundle import (  # noqa: E402
    augmentation,
    data,
    engines,
    handlers,
    inferers,
    interactive,
    metrics,
    networks,
    postprocessing,
    preprocessing,
    transforms,
)

__all__ = [
    "augmentation",
    "data",
    "engines",
    "handlers",
    "inferers",
    "interactive",
    "metrics",
    "networks",
    "postprocessing",
    "preprocessing",
    "transforms",
]
__version__ = "0.9.1"
