"""The one seed derivation: every random stream in widthkit is a pure function of named parts."""
from __future__ import annotations

import hashlib


def derive_seed(*parts) -> int:
    """A stable 63-bit seed from any parts, e.g. ``derive_seed(recipe_seed, member_seed, "init", width)``.

    Parts are joined by their ``str`` (so ints and names mix) and hashed with SHA-256, so
    the result is independent of ``PYTHONHASHSEED``, the platform and the call order, and
    distinct part tuples give independent streams.
    """
    return int(hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:15], 16)
