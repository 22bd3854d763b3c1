"""Immutable empties shared by every object that has nothing of its own (memory per job)."""

from __future__ import annotations

from typing import Any


class _SharedEmptyDict(dict):  # type: ignore[type-arg]
    """The one empty ``kwargs``/``metadata`` dict that every job spec, engine schedule and
    engine task without any shares: 64 B less per object (memory per idle schedule, see
    bench/README.md). Its holders only read it or copy it; mutating it in place raises,
    where it would otherwise have changed every holder at once."""

    __slots__ = ()

    def _refuse(self, *args: object, **kwargs: object) -> None:
        raise TypeError("job specs, schedules and tasks share this empty dict: build a new one")

    __setitem__ = __delitem__ = __ior__ = _refuse  # type: ignore[assignment]
    update = setdefault = pop = popitem = clear = _refuse  # type: ignore[assignment]


SHARED_EMPTY: dict[str, Any] = _SharedEmptyDict()
