"""Tasks: the data a width ladder is trained and evaluated on.

``load_task(spec, root=..., online=..., seed=..., n_train=..., n_test=..., **options) -> Task``

Spec syntax (one string, as written in a recipe's ``data.task``)::

    NAME[:CLASSES][?KEY=VALUE&KEY=VALUE...]

* ``NAME`` is one of :func:`list_tasks`: ``digits``, ``mnist1d``, ``teacher``, ``cifar10``, ``cifar100``,
  ``cifar5m``, ``imagefolder`` (one module each in this package, which documents its options).
* ``CLASSES`` keeps only some classes and relabels them ``0..k-1`` in the order given:
  ``digits:0-4``, ``digits:5-9``, ``cifar10:3,5`` (``0-2,7`` mixes both forms).  The kept original ids are
  in ``task.classes``.
* ``?KEY=VALUE`` sets options, exactly like keyword arguments (``teacher?perturb=0.5&teacher_seed=1``).
  Values are literals (:func:`widthkit.validate.parse_value`) checked against the option's type.  Options in
  the spec win over keyword arguments, so a transfer target string can fully describe its task.  ``seed``,
  ``n_train``, ``n_test`` and ``online`` may also be set this way.  Recipes pass ``data.task``, ``data.root``,
  ``data.online`` and other ``[data]`` keys as kwargs.

``root=""`` means ``data/`` (relative to the working directory).  Nothing is ever downloaded: a missing dataset
raises a one-line :class:`WidthkitError` saying which file to put where.

Normalization: image inputs (digits, CIFAR, CIFAR-5m, image folders) are standardized per channel with the mean
and std of the task's full training split (all classes, before class selection and ``n_train`` truncation, so
``digits:0-4`` and ``digits:5-9`` see the same pixel scale).  MNIST-1D keeps its package's own standardization
(one mean/std over the generated set), applied to online samples too.  Teacher inputs are already standard.

Finite tasks truncate to the first ``n_train``/``n_test`` samples of a fixed shuffled order.  Online tasks keep a
fixed train-eval set and a fixed test set (drawn with fixed seeds), so test outputs are comparable across steps
and widths; ``task.sample(n, generator)`` draws fresh training samples reproducibly from the generator, and
``task.sample_many(n, generators)`` those of several generators at once (the trainer's chunks of steps; one batched
call when the builder's sampler is a :class:`StagedSampler`, as mnist1d's, teacher's and
cifar5m's are).

Besides the contract fields, a Task carries ``spec`` (canonical spec string, e.g. ``teacher?perturb=0.5``) and
``class_names``; it pickles as a small "load this again" recipe, so it can be sent to worker processes.

Tasks are cached per process (many widths load the same task): the returned tensors are shared, so callers must
not modify them in place.  :func:`clear_cache` frees them.

Adding a task: write one module with a builder decorated by :func:`register_task` (see
:mod:`widthkit.data.registry` and :mod:`widthkit.data.source`) and import it below.
"""
from widthkit.data.registry import clear_cache, list_tasks, register_task
from widthkit.data.task import Sampler, StagedSampler, Task
from widthkit.data.loader import load_task
from widthkit.data import cifar, cifar5m, digits, imagefolder, mnist1d, teacher  # noqa: F401  (register)

__all__ = ["Sampler", "StagedSampler", "Task", "clear_cache", "list_tasks", "load_task", "register_task"]
