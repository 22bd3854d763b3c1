"""Keep the heap that exists at start out of the garbage collector's full passes.

A full (generation-2) collection walks every container object of the process: the app's
modules, classes and functions, pydantic's and FastAPI's, and every schedule and job the
scheduler just built. Right after a start that built 1,000-3,000 schedules, the objects the
start allocated make the next full pass due, and it landed in the first fires (25-60 ms
with every run of that second waiting behind it; bench/README.md). ``gc.freeze()`` moves
every object alive at that moment to the permanent generation, which no collection walks:
later passes only look at what was made since, and are short.

Owned by the scheduler's run (``SchedulerConfig.gc_freeze``, on by default):

- **start** freezes, only if the collector is enabled and nothing is frozen yet (an app that
  runs ``gc.disable()`` or freezes its own heap, e.g. before forking workers, manages the
  collector itself: it is left alone). Several schedulers of one process share one freeze.
- **stop** (of the last scheduler that froze) unfreezes, unless something else froze
  objects meanwhile (a container made right after our freeze is frozen too): those stay
  frozen, as their owner wants. Unfreezing puts the objects back in the oldest
  generation, as if never frozen. Telling costs one walk of the objects made since the
  freeze (the frozen ones are not walked), at stop.

Objects are never freed later than without the freeze by reference counting (almost all
of them); only a reference *cycle* among objects alive at start that becomes garbage while
the scheduler runs waits for the stop (an explicit ``gc.collect()`` does not reach it
either). ``gc.freeze`` and ``gc.unfreeze`` are O(1): nothing is walked.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable

_lock = threading.Lock()
_holders = 0
"""Running schedulers that share the freeze."""
_ours = False
"""Whether we hold a freeze (and undo it when the last holder stops)."""
_foreign = False
"""Something else froze objects while we held the freeze: never unfreeze theirs."""
_witness: list[None] | None = None
"""A container made right after our latest freeze: frozen later only if something else
called ``gc.freeze()`` (the frozen count cannot tell: frozen objects that are freed lower
it, so a count as high as ours does not mean nobody froze since)."""


def _noop() -> None:
    pass


def _frozen_since(witness: list[None] | None) -> bool:
    """Whether ``witness`` (made after our freeze) was frozen since: no generation lists
    it. Walks only what is not frozen: what was made since the freeze and still lives."""
    return witness is not None and all(obj is not witness for obj in gc.get_objects())


def freeze_heap() -> Callable[[], None]:
    """Freeze the heap for a scheduler's run (see the module); returns what undoes it.

    The returned function is idempotent; call it when the run ends, whatever the outcome.
    """
    global _holders, _ours, _foreign, _witness
    with _lock:
        if not _ours:
            if not gc.isenabled() or gc.get_freeze_count():
                return _noop  # the app manages the collector: not ours to change
            _foreign = False
        elif _frozen_since(_witness):
            _foreign = True
        gc.freeze()  # also takes in what this scheduler's start built since an earlier freeze
        _witness = [None]
        _ours = True
        _holders += 1
    released = False

    def release() -> None:
        global _holders, _ours, _witness
        nonlocal released
        with _lock:
            if released:
                return
            released = True
            _holders -= 1
            if _holders or not _ours:
                return
            _ours = False
            witness, _witness = _witness, None
            # Something else froze objects of its own since: leave them (and ours) frozen.
            if not _foreign and not _frozen_since(witness):
                gc.unfreeze()

    return release
