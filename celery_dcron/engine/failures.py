"""Which publish failures can never succeed on a retry: one rule, :func:`rejection`.

A failed publish is either *transient* (the way to the broker failed: it is retried, with
the same task id, until it goes through) or *permanent* (the message itself is refused:
a retry sends the same message to the same place and fails the same way, every second,
forever). A permanent failure finishes its tick: :mod:`.dispatch` logs it once
(``publish_rejected``), counts it (``dcron_publish_rejected_total{reason}``) and keeps
it as the entry's last error in the registry (``celery dcron show``, the admin).

The rule, by exception type (never by message), first match wins:

1. amqp ``ContentTooLarge`` (311: over the broker's message size limit): ``refused``;
2. :data:`TRANSIENT`: ``OSError`` (``ConnectionError``, ``TimeoutError``, sockets),
   kombu ``OperationalError`` (how kombu reports a lost connection), ``LimitExceeded``
   (a pool), amqp connection errors and recoverable channel errors, redis-py
   ``ConnectionError`` and ``TimeoutError``: retried;
3. ``TypeError``: ``arguments`` (args/kwargs that do not fit the task: Celery's typing
   check in ``apply_async``; or an option of the wrong type);
4. kombu ``SerializationError`` (``EncodeError``: kombu wraps the serializer's own
   ``TypeError``/``ValueError``) and ``SerializerNotInstalled`` (``ContentDisallowed``):
   ``serialization``;
5. ``ValueError``: ``invalid`` (a value Celery refuses, such as inconsistent time limits);
6. Celery ``QueueNotFound`` (``task_create_missing_queues = False``) and amqp
   ``NotFound`` (404: no such exchange or queue): ``routing``;
7. other amqp irrecoverable channel errors (403 access refused, 406 precondition failed):
   ``refused``;
8. anything else is not understood, so never given up: retried.

A whole publish batch that fails (its one round trip to the broker) is transient: its
messages' delivery is uncertain, and which one caused it is unknown.
"""

from __future__ import annotations

import enum

import amqp.exceptions
import kombu.exceptions
import redis.exceptions
from celery.exceptions import QueueNotFound

__all__ = ["TRANSIENT", "Rejection", "is_permanent", "rejection"]


class Rejection(str, enum.Enum):
    """Why a publish can never succeed: the ``reason`` of a rejected tick."""

    #: args/kwargs that do not fit the task's signature, or an option of the wrong type
    ARGUMENTS = "arguments"
    #: the serializer cannot encode the message (or is not installed, or not allowed)
    SERIALIZATION = "serialization"
    #: a value Celery or kombu refuses
    INVALID = "invalid"
    #: no such queue or exchange
    ROUTING = "routing"
    #: the broker refuses the message (access, a precondition, its size)
    REFUSED = "refused"


#: Failures on the way to the broker: retried with the same task id.
TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,
    kombu.exceptions.OperationalError,
    kombu.exceptions.LimitExceeded,
    amqp.exceptions.ConnectionError,
    amqp.exceptions.RecoverableChannelError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)

#: The rule: (exception types, reason or None for transient); the first match wins.
_RULES: tuple[tuple[tuple[type[BaseException], ...], Rejection | None], ...] = (
    ((amqp.exceptions.ContentTooLarge,), Rejection.REFUSED),
    (TRANSIENT, None),
    ((TypeError,), Rejection.ARGUMENTS),
    (
        (kombu.exceptions.SerializationError, kombu.exceptions.SerializerNotInstalled),
        Rejection.SERIALIZATION,
    ),
    ((ValueError,), Rejection.INVALID),
    ((QueueNotFound, amqp.exceptions.NotFound), Rejection.ROUTING),
    ((amqp.exceptions.IrrecoverableChannelError,), Rejection.REFUSED),
)


def rejection(exc: BaseException) -> Rejection | None:
    """Why the publish that raised ``exc`` can never succeed; None when it may on a retry."""
    for types, reason in _RULES:
        if isinstance(exc, types):
            return reason
    return None


def is_permanent(exc: BaseException) -> bool:
    """Whether a publish that raised ``exc`` would fail the same way on every retry."""
    return rejection(exc) is not None
