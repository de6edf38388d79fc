"""BLO-SAM bundle: bi-level fine-tuning of Segment Anything for few-shot medical segmentation.

Configs reach everything as ``bundle.<module>.<name>`` after ``"$import bundle"``.
"""

from bundle import data, engines, handlers, inferers, networks, transforms

__all__ = ["data", "engines", "handlers", "inferers", "networks", "transforms"]
__version__ = "0.1.0"
