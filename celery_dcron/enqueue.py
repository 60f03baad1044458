"""Exactly-once enqueue when the broker is the registry's Redis (``dcron_enqueue``).

With any broker, a claimed tick is published by Celery and then marked sent in the
registry: a crash or freeze between the two leaves the claim pending, and the next owner
publishes it again (same task id). When the broker is the registry's own Redis server and
database (kombu's ``redis://`` transport; the default deployment), the publish and the
"mark sent" become one Lua script instead
(:data:`~celery_dcron.registry.scripts.ENQUEUE`): the message is pushed onto its queue
list only while the tick's claim is pending and this node's, and the claim stops being
pending in the same step. No crash, freeze, lost reply or retry can push a tick twice.

The message is still built by Celery's own code, unchanged: :func:`capturing` installs a
:class:`Capture` as the producer's publish batch (kombu's hook, ``Producer._batch_local``),
so ``apply_async`` runs as always (routing, exchanges and their bindings, priority lists,
headers, ``before_task_publish`` and ``after_task_publish``) and kombu's Redis transport
hands the capture the final Redis commands of each message (``LPUSH`` onto the queue
list, ``PEXPIRE`` for a queue with ``x-expires``, ``PUBLISH`` for a fanout), as it would
hand them to a batch. Those commands run in the script, byte for byte.

:class:`FastPath` decides once whether the broker is the registry's Redis, and logs the
decision and its reason.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any, Literal

from .config import Settings
from .exceptions import RegistryUnavailableError
from .registry import BrokerCommand, Registry
from .topology import Topology

__all__ = ["Capture", "FastPath", "capturing"]

logger = logging.getLogger(__name__)

#: The Redis commands kombu's Redis transport adds to a publish batch.
_COMMANDS: dict[str, Literal["lpush", "pexpire", "publish"]] = {
    "lpush": "lpush",
    "pexpire": "pexpire",
    "publish": "publish",
}


class Capture:
    """Stands in for kombu's publish batch while Celery publishes: keeps each message's
    final Redis commands instead of sending them (:meth:`take` returns them)."""

    def __init__(self) -> None:
        self._commands: list[BrokerCommand] = []
        self._prefix = ""

    # -- what kombu's Producer._publish calls on its batch (``_ProducerBatchState``)

    def publish(self, channel: Any, message: Any, **kwargs: Any) -> Any:
        if not hasattr(channel, "create_publish_batch"):
            # A transport that would ignore ``_publish_batch`` and send at once.
            raise RuntimeError(f"dcron: cannot capture a publish on {type(channel).__name__}")
        self._prefix = str(getattr(channel, "global_keyprefix", "") or "")
        return channel.basic_publish(message, _publish_batch=self, **kwargs)

    # -- what kombu's Redis Channel._put / _put_fanout call on a batch (``PublishBatch``)

    def add(self, name: str, *args: Any) -> None:
        op = _COMMANDS.get(name)
        if op is None or len(args) != 2:
            raise RuntimeError(f"dcron: unexpected broker command {name!r} in a publish")
        target, value = args
        if isinstance(value, bytes):
            value = value.decode()
        # kombu's prefixed client adds global_keyprefix to the first argument of each
        self._commands.append(BrokerCommand(op, self._prefix + str(target), str(value)))

    # -- ours

    def peek(self) -> list[BrokerCommand]:
        """The commands of the messages published since the last :meth:`take`, kept."""
        return list(self._commands)

    def extend(self, commands: list[BrokerCommand]) -> None:
        """Add the commands of a message built elsewhere (a template)."""
        self._commands.extend(commands)

    def take(self) -> list[BrokerCommand]:
        """The commands of the messages published since the last call."""
        commands, self._commands = self._commands, []
        return commands

    def discard(self) -> None:
        """Forget what a publish that failed half-way added."""
        self._commands = []


@contextlib.contextmanager
def capturing(producer: Any) -> Iterator[Capture]:
    """Within the block, ``producer`` publishes into a :class:`Capture` (nothing is sent)."""
    local = producer._batch_local
    if getattr(local, "current", None) is not None:
        raise RuntimeError("dcron: a publish batch of this producer is already open")
    capture = Capture()
    local.current = capture
    try:
        yield capture
    finally:
        del local.current


class FastPath:
    """Whether this instance sends claimed ticks with :data:`ENQUEUE` (the broker is the
    registry's Redis) or by Celery's publish; decided once, and logged with its reason.

    :meth:`capture` is the dispatcher's hook: a :func:`capturing` context on the beat's
    producer, or None (publish as usual).
    """

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        *,
        connection: Any,
        producer: Callable[[], Any],
    ) -> None:
        self.settings = settings
        self.registry = registry
        #: the beat's broker connection (kombu), not connected yet
        self.connection = connection
        #: the beat's producer (connects on first use)
        self.producer = producer
        #: None: not decided yet; else whether the fast path is on
        self.enabled: bool | None = None
        self.reason = ""
        static = self._static_reason()
        if static is not None:
            self._decide(False, static)

    def current(self) -> Capture | None:
        """The capture open on the beat's producer (inside :meth:`capture`'s context),
        else None."""
        if not self.enabled:
            return None
        current = getattr(self.producer()._batch_local, "current", None)
        return current if isinstance(current, Capture) else None

    def decide(self) -> bool:
        """Whether the fast path is on, deciding it now if not yet. Raises
        RegistryUnavailableError while the broker or the registry does not answer."""
        if self.enabled is None:
            self._decide_by_server()
        return bool(self.enabled)

    def capture(self) -> contextlib.AbstractContextManager[Capture] | None:
        if not self.decide():
            return None
        return capturing(self.producer())

    # -- the decision

    def _decide(self, enabled: bool, reason: str) -> None:
        self.enabled, self.reason = enabled, reason
        if enabled:
            logger.info(
                "dcron: enqueue: claimed ticks are pushed and marked sent in one script (%s)",
                reason,
            )
        else:
            logger.info(
                "dcron: enqueue: claimed ticks are published by Celery, then marked sent (%s)",
                reason,
            )

    def _static_reason(self) -> str | None:
        """Why the fast path cannot be used, from the settings alone; None: maybe."""
        if self.settings.enqueue == "publish":
            return "dcron_enqueue = 'publish'"
        if self.settings.redis_target.topology is Topology.CLUSTER:
            return "the registry is a Redis Cluster: a queue list may be in another slot"
        channel = getattr(self.connection.transport, "Channel", None)
        if not (hasattr(channel, "create_publish_batch") and hasattr(channel, "_put")):
            return (
                f"the broker transport {self.connection.transport_cls!r} is not kombu's "
                "Redis transport with publish batches (kombu 5.7+)"
            )
        return None

    def _decide_by_server(self) -> None:
        """Compare the broker's Redis with the registry's (server ``run_id`` and database).
        Raises RegistryUnavailableError when either does not answer (nothing was sent yet:
        decided on the next attempt)."""
        registry = self.registry
        ours = registry.transport.run(lambda: registry.client.info("server"))
        try:
            client = self.producer().channel.client
            theirs = client.info("server")
        except Exception as exc:
            raise RegistryUnavailableError(
                "dcron: cannot reach the broker to tell whether it is the registry's Redis: "
                f"{exc!r}"
            ) from exc
        our_db, their_db = _db(registry.client), _db(client)
        if ours.get("run_id") != theirs.get("run_id"):
            self._decide(False, "the broker is another Redis server than the registry's")
        elif our_db != their_db:
            self._decide(
                False, f"the broker is database {their_db}, the registry database {our_db}"
            )
        else:
            self._decide(True, f"the broker is the registry's Redis, database {our_db}")


def _db(client: Any) -> int:
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {}) or {}
    return int(kwargs.get("db") or 0)
