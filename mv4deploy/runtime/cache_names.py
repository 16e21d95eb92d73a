"""The KV-cache argument under either of its transformers names.

transformers 5.25 renamed the cache argument of every ``forward`` and the cache field of every model
output from ``past_key_values`` to ``cache`` (the old argument still works, with a FutureWarning, until
5.40; a wrapper that declares ``past_key_values`` itself then receives ``cache`` in ``**kwargs``).
Code that calls, wraps or hooks a transformers model asks these helpers instead of spelling one name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

CACHE_NAMES = ("cache", "past_key_values")  # newest first


def cache_arg(parameters: Iterable[str]) -> str | None:
    """The cache argument a ``forward`` with these parameter names takes (None: it keeps no cache)."""
    names = set(parameters)
    return next((name for name in CACHE_NAMES if name in names), None)


def forward_cache_arg(model) -> str:
    """The cache argument of ``model.forward`` (``past_key_values`` before transformers 5.25)."""
    import inspect
    return cache_arg(inspect.signature(model.forward).parameters) or "past_key_values"


def cache_in(kwargs: Mapping):
    """The cache passed in ``kwargs`` under either name (None when there is none)."""
    for name in CACHE_NAMES:
        value = kwargs.get(name)
        if value is not None:
            return value
    return None


def output_cache(output):
    """The cache a model output returns (``output.cache`` from 5.25, ``output.past_key_values`` before)."""
    for name in CACHE_NAMES:
        value = output.get(name) if isinstance(output, Mapping) else getattr(output, name, None)
        if value is not None:
            return value
    return None
