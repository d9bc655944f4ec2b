"""``load_task``: spec + options -> validated request -> builder (cached per process) -> relabelled Task."""
from __future__ import annotations

from pathlib import Path

import torch

from widthkit.data.registry import cache, get_source, online_tasks
from widthkit.data.source import Built, Request
from widthkit.data.spec import format_spec, parse_spec
from widthkit.data.task import Task, map_sampler
from widthkit.errors import WidthkitError
from widthkit.validate import PositiveInt, check_options, signature_options


def load_task(spec: str, *, root: str = "", online: bool = False, seed: int = 0, n_train: PositiveInt | None = None,
              n_test: PositiveInt | None = None, **options) -> Task:
    """Load (or fetch from the per-process cache) the task described by ``spec``; see :mod:`widthkit.data`."""
    name, classes, spec_opts = parse_spec(spec)
    source = get_source(name)
    given = dict(options, seed=seed, n_train=n_train, n_test=n_test, online=online)
    given.update(spec_opts)  # the spec string is the more specific source
    resolved = check_options(given, {**_LOAD_OPTIONS, **source.options}, f"task '{name}'")
    for key, opt in source.options.items():
        resolved.setdefault(key, opt.default)
    if resolved["n_train"] is None:
        resolved["n_train"] = source.n_train
    if resolved["n_test"] is None:
        resolved["n_test"] = source.n_test
    if resolved["online"] and not source.online:
        raise WidthkitError(f"task '{name}' has no online mode; set data.online = false, "
                            f"or use an online task: {', '.join(online_tasks())}")
    root_path = str(Path(root or "data").expanduser().resolve())
    return _load_cached((name, classes, root_path, tuple(sorted(resolved.items()))))


_LOAD_OPTIONS = signature_options(load_task, skip=("root",))


@cache(maxsize=6)
def _load_cached(key) -> Task:
    name, classes, root, items = key
    opts = dict(items)
    req = Request(name=name, root=root, classes=classes, seed=opts.pop("seed"), n_train=opts.pop("n_train"),
                  n_test=opts.pop("n_test"), online=opts.pop("online"))
    source = get_source(name)
    changed = {k: v for k, v in opts.items() if v != source.options[k].default}
    task = _finish(req, format_spec(name, classes, changed), source.build(req, **opts))
    task.reload = (_load_cached, (key,))
    return task


def _finish(req: Request, spec: str, built: Built) -> Task:
    """Relabel kept classes to 0..k-1 (sampler too) and wrap everything into a Task."""
    sampler = built.sampler if req.online else None
    if built.kind == "regression":
        if req.classes is not None:
            raise WidthkitError(f"task '{spec}' is a regression task: class lists need a classification task "
                                f"(for teacher set classes=K)")
        return Task(req.name, "regression", built.in_shape, built.num_classes, built.x_train, built.y_train,
                    built.x_test, built.y_test, req.online, [], spec, [], sampler)
    keep = list(req.classes) if req.classes is not None else list(range(built.num_classes))
    lut = torch.full((built.num_classes,), -1, dtype=torch.long)
    lut[torch.tensor(keep, dtype=torch.long)] = torch.arange(len(keep))
    if sampler is not None:
        sampler = map_sampler(sampler, lambda x, y: (x, lut[y]))
    names = [built.class_names[c] for c in keep] if built.class_names else []
    return Task(req.name, "classification", built.in_shape, len(keep), built.x_train, lut[built.y_train],
                built.x_test, lut[built.y_test], req.online, keep, spec, names, sampler)
