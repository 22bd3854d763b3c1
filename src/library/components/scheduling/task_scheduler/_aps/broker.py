"""A lean in-process event broker for the memory store (APScheduler 4.0.0a6).

APScheduler's ``LocalEventBroker`` starts one task per event per subscriber, and every event
is built whether anyone listens or not: at 1,000 fires a second that was a third of the
engine's CPU. This broker calls a synchronous callback inline, in the publisher's task (the
way ``anyio.Event.set`` or a counter is updated), and tells a publisher whether an event type
has any subscriber at all (:meth:`LeanEventBroker.wants`), so the data store builds only
events someone receives. Coroutine callbacks and ``is_async=False`` (thread) callbacks are
delivered as the stock broker does, in the broker's own task group.

Used only with the memory store, inside one process; a Redis broker stays as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable
from contextlib import AsyncExitStack
from inspect import iscoroutine
from logging import Logger
from typing import Any

import attrs
from anyio import CapacityLimiter, create_task_group, to_thread
from anyio.abc import TaskGroup
from apscheduler import Event
from apscheduler.abc import EventBroker, Subscription

from .pin import require_engine_version

require_engine_version()


class LeanSubscription(Subscription):
    """One subscriber; ``with`` it, or call :meth:`unsubscribe`, to stop receiving."""

    __slots__ = ("broker", "callback", "event_types", "is_async", "one_shot")

    def __init__(
        self,
        broker: LeanEventBroker,
        callback: Callable[[Any], Any],
        event_types: frozenset[type[Event]] | None,
        is_async: bool,
        one_shot: bool,
    ) -> None:
        self.broker = broker
        self.callback = callback
        self.event_types = event_types
        self.is_async = is_async
        self.one_shot = one_shot

    def unsubscribe(self) -> None:
        self.broker.unsubscribe(self)


@attrs.define(eq=False, repr=False)
class LeanEventBroker(EventBroker):
    """In-process broker: sync callbacks inline, no event built that nobody receives."""

    _subscriptions: dict[LeanSubscription, None] = attrs.field(init=False, factory=dict)
    """Subscribers in subscription order (a dict: ordered, O(1) removal)."""
    _by_type: dict[type[Event], int] = attrs.field(init=False, factory=dict)
    """How many subscribers want each event type (for :meth:`wants`)."""
    _for_all: int = attrs.field(init=False, default=0)
    """Subscribers to every event type."""
    _logger: Logger | None = attrs.field(init=False, default=None)
    _task_group: TaskGroup | None = attrs.field(init=False, default=None)
    _thread_limiter: CapacityLimiter | None = attrs.field(init=False, default=None)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    async def start(self, exit_stack: AsyncExitStack, logger: Logger) -> None:
        self._logger = logger
        # Only coroutine and thread callbacks run here; the engine closes it at stop.
        self._task_group = await exit_stack.enter_async_context(create_task_group())
        self._thread_limiter = CapacityLimiter(1)

    def subscribe(
        self,
        callback: Callable[[Any], Any],
        event_types: Iterable[type[Event]] | None = None,
        *,
        is_async: bool = True,
        one_shot: bool = False,
    ) -> Subscription:
        types = frozenset(event_types) if event_types else None
        subscription = LeanSubscription(self, callback, types, is_async, one_shot)
        self._subscriptions[subscription] = None
        if types is None:
            self._for_all += 1
        else:
            for event_type in types:
                self._by_type[event_type] = self._by_type.get(event_type, 0) + 1
        return subscription

    def unsubscribe(self, subscription: object) -> None:
        """Remove a subscription (idempotent)."""
        if not isinstance(subscription, LeanSubscription):
            return
        if subscription not in self._subscriptions:
            return
        del self._subscriptions[subscription]
        types = subscription.event_types
        if types is None:
            self._for_all -= 1
        else:
            for event_type in types:
                left = self._by_type[event_type] - 1
                if left:
                    self._by_type[event_type] = left
                else:
                    del self._by_type[event_type]

    def wants(self, event_type: type[Event]) -> bool:
        """True if some subscriber receives events of this exact type."""
        return self._for_all > 0 or event_type in self._by_type

    async def publish(self, event: Event) -> None:
        self.publish_now(event)

    async def publish_local(self, event: Event) -> None:
        self.publish_now(event)

    def publish_now(self, event: Event) -> None:
        """Deliver ``event`` to its subscribers; sync callbacks have run when this returns."""
        event_type = type(event)
        if not (self._for_all or event_type in self._by_type):
            return
        # A snapshot: callbacks may subscribe or unsubscribe while we deliver.
        for subscription in list(self._subscriptions):
            types = subscription.event_types
            if types is not None and event_type not in types:
                continue
            if subscription.one_shot:
                if subscription not in self._subscriptions:
                    continue  # a one-shot that an earlier callback already fired
                self.unsubscribe(subscription)
            self._deliver(subscription, event)

    def _deliver(self, subscription: LeanSubscription, event: Event) -> None:
        if not subscription.is_async:
            self._spawn(self._in_thread, subscription.callback, event)
            return
        try:
            result = subscription.callback(event)
        except Exception:
            self._log_failure(event)
            return
        if iscoroutine(result):
            self._spawn(self._await, result, event)

    def _spawn(self, func: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
        if self._task_group is None:
            for arg in args:
                if iscoroutine(arg):
                    arg.close()
            raise RuntimeError("the event broker has not been started")
        self._task_group.start_soon(func, *args)

    async def _await(self, coro: Coroutine[Any, Any, Any], event: Event) -> None:
        try:
            await coro
        except Exception:
            self._log_failure(event)

    async def _in_thread(self, callback: Callable[[Any], Any], event: Event) -> None:
        try:
            await to_thread.run_sync(callback, event, limiter=self._thread_limiter)
        except Exception:
            self._log_failure(event)

    def _log_failure(self, event: Event) -> None:
        if self._logger is not None:
            self._logger.exception("a subscriber to %s events failed", type(event).__name__)
