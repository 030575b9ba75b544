"""The run directory's stages and the pipeline that chains them.

``layout`` names every file of a run; ``record`` skips stages whose inputs have not changed;
``stages`` holds one function per stage, which the stage commands and ``run_pipeline`` call.
"""
from .layout import RunLayout
from .run import DEMO_SPACE, run_pipeline

__all__ = ["RunLayout", "DEMO_SPACE", "run_pipeline"]
