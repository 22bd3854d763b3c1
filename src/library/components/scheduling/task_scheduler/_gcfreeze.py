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
  objects meanwhile (the frozen count grew past ours): those stay frozen, as their owner
  wants. Unfreezing puts the objects back in the oldest generation, as if never frozen.

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
_frozen_by_us: int | None = None
"""``gc.get_freeze_count()`` right after our latest freeze; None while we hold none."""
_foreign = False
"""Something else froze objects while we held the freeze: never unfreeze theirs."""


def _noop() -> None:
    pass


def freeze_heap() -> Callable[[], None]:
    """Freeze the heap for a scheduler's run (see the module); returns what undoes it.

    The returned function is idempotent; call it when the run ends, whatever the outcome.
    """
    global _holders, _frozen_by_us, _foreign
    with _lock:
        if _frozen_by_us is None:
            if not gc.isenabled() or gc.get_freeze_count():
                return _noop  # the app manages the collector: not ours to change
            _foreign = False
        elif gc.get_freeze_count() > _frozen_by_us:
            _foreign = True
        gc.freeze()  # also takes in what this scheduler's start built since an earlier freeze
        _frozen_by_us = gc.get_freeze_count()
        _holders += 1
    released = False

    def release() -> None:
        global _holders, _frozen_by_us
        nonlocal released
        with _lock:
            if released:
                return
            released = True
            _holders -= 1
            if _holders or _frozen_by_us is None:
                return
            ours, _frozen_by_us = _frozen_by_us, None
            # Frozen objects that were freed only lower the count: a higher one means the
            # app froze objects of its own since. Leave those (and ours) frozen then.
            if not _foreign and gc.get_freeze_count() <= ours:
                gc.unfreeze()

    return release
