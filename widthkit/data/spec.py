"""Task spec strings: ``NAME[:CLASSES][?KEY=VALUE&KEY=VALUE...]`` parsed and written back canonically."""
from __future__ import annotations

import re
from typing import Any

from widthkit.data.registry import list_tasks
from widthkit.errors import WidthkitError
from widthkit.validate import parse_value


def parse_spec(spec: str) -> tuple[str, tuple[int, ...] | None, dict[str, Any]]:
    """``(name, classes or None, options)``; option values are literals (:func:`widthkit.validate.parse_value`)."""
    if not isinstance(spec, str) or not spec.strip():
        raise WidthkitError(f"data.task must be a task name like 'digits'; valid: {', '.join(list_tasks())}")
    head, _, query = spec.strip().partition("?")
    name, colon, cls = head.partition(":")
    classes = parse_classes(cls, spec) if colon else None
    opts: dict[str, Any] = {}
    for item in filter(None, query.split("&")):
        key, eq, val = item.partition("=")
        if not eq or not key.strip():
            raise WidthkitError(f"bad option '{item}' in task '{spec}'; write KEY=VALUE pairs joined by '&'")
        opts[key.strip()] = parse_value(val)
    return name.strip(), classes, opts


def parse_classes(text: str, spec: str) -> tuple[int, ...]:
    """``'0-2,7'`` -> ``(0, 1, 2, 7)`` (order kept; a repeated class is an error)."""
    out: list[int] = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m:
            raise WidthkitError(
                f"bad class list '{text}' in task '{spec}'; write classes like '0-4' or '0,2,4', "
                f"and options after '?', e.g. 'teacher?perturb=0.5'")
        lo, hi = int(m.group(1)), int(m.group(2) if m.group(2) is not None else m.group(1))
        if hi < lo:
            raise WidthkitError(f"bad class range '{part.strip()}' in task '{spec}'; write low-high, e.g. '0-4'")
        out.extend(range(lo, hi + 1))
    if len(set(out)) != len(out):
        raise WidthkitError(f"class list '{text}' in task '{spec}' repeats a class; list each class once")
    return tuple(out)


def format_spec(name: str, classes: tuple[int, ...] | None, options: dict[str, Any]) -> str:
    """The canonical spec string, e.g. ``teacher?perturb=0.5`` (give only options that differ from defaults);
    :func:`parse_spec` reads it back."""
    spec = name
    if classes is not None:
        spec += ":" + ",".join(map(str, classes))
    if options:
        spec += "?" + "&".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}"
                               for k, v in sorted(options.items()))
    return spec
