"""The data engine: retrain on the annotations made so far, and measure the effort it saves.

- :mod:`.labels`: the labelled images of an annotation file and their stable held-out split;
- :mod:`.effort`: clicks per object to a target IoU, with intervals;
- :mod:`.retrain`: one turn (train, score beside the previous model, install), used by
  ``samadapt engine`` and by the annotation page's "Adapt" button;
- ``recipes/data_engine.py`` simulates the loop on real frames (docs/data_engine.md).
"""

from .effort import DEFAULT_TARGETS, MAX_CLICKS, clicks_to_target, effort_gain, effort_summary
from .labels import labelled_images, split_labelled
from .retrain import EngineTurn, adapt_on_annotations

__all__ = [
    "DEFAULT_TARGETS",
    "MAX_CLICKS",
    "EngineTurn",
    "adapt_on_annotations",
    "clicks_to_target",
    "effort_gain",
    "effort_summary",
    "labelled_images",
    "split_labelled",
]
