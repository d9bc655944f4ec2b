"""Result dataclasses that serialize to JSON and load back, typed.

Analyses return dataclasses inheriting :class:`Result`.  ``to_dict`` turns numpy arrays, tensors and
nested dataclasses into plain JSON types (NaN and inf become ``null``); ``save`` writes the JSON
atomically with the class name (``kind``) and its ``schema_version``.  ``Result.load(path)`` rebuilds
the dataclass from its type hints -- nested dataclasses, ``list[float]``, ``dict[int, ...]``,
``X | None`` -- so readers use attributes, never string keys.  A file of another kind, of another
schema version, or that does not fit the fields raises :class:`ResultFileError` naming the file.
In a notebook, an analysis's result shows as its tables and readings, and ``result.plot()`` returns
its figures (see :data:`NOTEBOOK`).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np

from .atomic import atomic_write_text
from .errors import WidthkitError


#: How a result shows in a notebook, installed by :mod:`widthkit.analyses.base` (which knows the analysis
#: behind each result type): ``"figures": result -> list of Figures``, ``"html": result -> str | None``.
NOTEBOOK: dict[str, Callable] = {}


class ResultFileError(WidthkitError, ValueError):
    """A result file that cannot be loaded as the result type asked for."""


def to_jsonable(obj: Any) -> Any:
    """Convert ``obj`` to JSON-compatible Python types (NaN/inf become None)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "detach") and hasattr(obj, "cpu"):  # torch tensor
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_jsonable(tp: Any, value: Any, where: str = "") -> Any:
    """Rebuild a value of declared type ``tp`` from its JSON form (the inverse of :func:`to_jsonable`).

    ``null`` is NaN for ``float``; dict keys are converted to the declared key type (JSON keys are
    strings); untyped ``list``/``dict``/``Any`` fields are returned as stored.
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return from_jsonable(inner[0], value, where) if len(inner) == 1 else value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise TypeError(f"{where or tp.__name__}: expected an object, got {type(value).__name__}")
        hints = _hints(tp)
        names = {f.name for f in dataclasses.fields(tp)}
        extra = sorted(set(value) - names - {"kind", "schema_version"})
        if extra:
            raise TypeError(f"{where or tp.__name__}: unexpected fields {extra}")
        return tp(**{k: from_jsonable(hints[k], v, f"{where}.{k}" if where else k)
                     for k, v in value.items() if k in names})
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise TypeError(f"{where}: expected a list, got {type(value).__name__}")
        inner = args[0] if args else Any
        out = [from_jsonable(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return out if origin is list else tuple(out)
    if origin is dict:
        if not isinstance(value, dict):
            raise TypeError(f"{where}: expected an object, got {type(value).__name__}")
        kt, vt = args if args else (Any, Any)
        return {from_jsonable(kt, k, where): from_jsonable(vt, v, f"{where}[{k}]") for k, v in value.items()}
    if tp is float:
        return float("nan") if value is None else float(value)
    if tp is int:
        return int(value)
    if tp is bool:
        return bool(value)
    if tp is str:
        return str(value)
    if tp is Path:
        return Path(value)
    return value


@dataclasses.dataclass
class Result:
    """Base class of every analysis result: JSON out with ``save``, the same dataclass back with ``load``."""

    schema_version: ClassVar[int] = 1

    def to_dict(self) -> dict:
        return {"kind": type(self).__name__, "schema_version": self.schema_version, **to_jsonable(self)}

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        atomic_write_text(path, self.to_json())
        return path

    def plot(self):
        """Its analysis's figures as matplotlib ``Figure`` objects, in a list Jupyter shows inline ([] if none)."""
        return NOTEBOOK["figures"](self) if "figures" in NOTEBOOK else []

    def _repr_html_(self) -> str | None:
        """Its tables and one-sentence readings, for Jupyter (None: results of no analysis show their repr)."""
        return NOTEBOOK["html"](self) if "html" in NOTEBOOK else None

    @classmethod
    def from_dict(cls, d: dict):
        """The result from its :meth:`to_dict` form; raises ResultFileError if kind or schema differ."""
        kind, version = d.get("kind"), d.get("schema_version")
        if kind != cls.__name__:
            raise ResultFileError(f"holds a {kind or 'untyped'} result, not a {cls.__name__}")
        if version != cls.schema_version:
            raise ResultFileError(f"has schema version {version}; this widthkit reads version {cls.schema_version}")
        try:
            return from_jsonable(cls, d)
        except (TypeError, ValueError) as e:
            raise ResultFileError(f"does not fit {cls.__name__} ({e})") from None

    @classmethod
    def load(cls, path: str | Path):
        """Rebuild the result saved at ``path``; one-line :class:`ResultFileError` if it cannot."""
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ResultFileError(f"cannot read result file '{path}' ({e.__class__.__name__}); "
                                  "rerun the analysis that wrote it") from None
        if not isinstance(d, dict):
            raise ResultFileError(f"result file '{path}' is not a JSON object; rerun the analysis that wrote it")
        try:
            res = cls.from_dict(d)
        except ResultFileError as e:
            raise ResultFileError(f"result file '{path}' {e}; rerun the analysis that wrote it") from None
        res._folder = path.parent  # where its figures and files are (plot() and the notebook view read them)
        return res
