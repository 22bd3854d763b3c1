"""What a persistent store may hold: JSON only, and only our trigger classes load back.

Also the engine's way of naming a callable (``module:qualname``) and finding it again, which
lives in APScheduler's private ``_marshalling`` module: every use of it goes through here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from apscheduler import DeserializationError
from apscheduler._marshalling import callable_from_ref, callable_to_ref
from apscheduler.serializers.json import JSONSerializer

TRIGGER_CLASSES = frozenset(
    {
        # The class path release 0.1.0 wrote into users' databases: it must keep loading.
        "library.components.scheduling.task_scheduler._cron:CronTrigger",
        "apscheduler.triggers.interval:IntervalTrigger",
        "apscheduler.triggers.date:DateTrigger",
    }
)
"""The only classes a persistent store may rebuild from its JSON."""


@attrs.define(kw_only=True, eq=False)
class SafeJSONSerializer(JSONSerializer):
    """APScheduler's JSON serializer, loading back only the trigger classes we use.

    The stock one rebuilds *any* importable class named in the stored JSON.
    """

    def _object_hook(self, obj_state: dict[str, Any]) -> Any:
        if self.magic_key in obj_state:
            ref = obj_state[self.magic_key][0]
            if ref not in TRIGGER_CLASSES:
                raise DeserializationError(f"refusing to load {ref!r} from the store")
        return super()._object_hook(obj_state)


def reference_to(func: Callable[..., Any]) -> str:
    """``module:qualname`` by which the engine stores ``func`` (SerializationError if none)."""
    return callable_to_ref(func)


def resolve_reference(ref: str) -> Callable[..., Any]:
    """The callable stored as ``ref`` (DeserializationError or LookupError if it is gone)."""
    func: Callable[..., Any] = callable_from_ref(ref)
    return func
