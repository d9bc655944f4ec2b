"""widthkit: a PyTorch toolkit for the science of network width.

Train width ladders (ensembles of seeds at many widths, in SP, NTK or muP), store
them in one crash-safe HDF5 run store, and measure what changes with width.
The public API is re-exported here lazily so ``import widthkit`` stays fast.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "create_model": "widthkit.models", "list_models": "widthkit.models", "register_model": "widthkit.models",
    "load_task": "widthkit.data", "list_tasks": "widthkit.data",
    "load_recipe": "widthkit.recipe", "parse_recipe": "widthkit.recipe", "Recipe": "widthkit.recipe",
    "parameterize": "widthkit.param",
    "Ensemble": "widthkit.engine",
    "train_ladder": "widthkit.ladder", "build_member": "widthkit.build",
    "get_executor": "widthkit.executors", "LocalExecutor": "widthkit.executors", "RayExecutor": "widthkit.executors",
    "open_run": "widthkit.store", "Run": "widthkit.store", "RunPoint": "widthkit.store",
    "coord_check": "widthkit.dynamics", "analyze": "widthkit.analyses", "list_analyses": "widthkit.analyses",
    "get_analysis": "widthkit.analyses",
    "ensemble_bias": "widthkit.analyses.ensemble_bias",
    "transfer": "widthkit.analyses.transfer",
    "study": "widthkit.studies", "write_report": "widthkit.report",
    **{name: "widthkit.errors" for name in (
        "WidthkitError", "WidthkitWarning", "RecipeError", "UnknownNameError", "DataNotFoundError", "DataError",
        "RunStoreError", "ClusterError", "JobsFailedError", "OptionalDependencyError")},
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'widthkit' has no attribute '{name}'")
