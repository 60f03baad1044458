"""Which publish failures are permanent (finished once) and which transient (retried):
the one rule, :func:`celery_dcron.engine.failures.rejection`, as a table."""

from __future__ import annotations

import socket

import amqp.exceptions
import kombu.exceptions
import pytest
import redis.exceptions
from celery import Celery
from celery.exceptions import QueueNotFound

from celery_dcron.engine.failures import Rejection, is_permanent, rejection

TABLE: list[tuple[BaseException, Rejection | None]] = [
    # the way to the broker: retried with the same task id
    (ConnectionError("broker down"), None),
    (ConnectionResetError(104, "Connection reset by peer"), None),
    (TimeoutError("timed out"), None),
    (socket.gaierror(-2, "Name or service not known"), None),
    (OSError(113, "No route to host"), None),
    (kombu.exceptions.OperationalError("[Errno 111] Connection refused"), None),
    (kombu.exceptions.TimeoutError(), None),
    (kombu.exceptions.ConnectionLimitExceeded(), None),
    (kombu.exceptions.InconsistencyError("cannot route message: binding lost"), None),
    (amqp.exceptions.RecoverableConnectionError("connection already closed"), None),
    (amqp.exceptions.ConnectionForced("broker shutdown"), None),
    (amqp.exceptions.ResourceLocked("locked"), None),
    (redis.exceptions.ConnectionError("Error 111 connecting"), None),
    (redis.exceptions.TimeoutError("Timeout reading from socket"), None),
    (redis.exceptions.BusyLoadingError("loading"), None),
    # not understood: never given up
    (RuntimeError("something odd"), None),
    (redis.exceptions.ResponseError("OOM command not allowed"), None),
    (AttributeError("'NoneType' object has no attribute 'sendall'"), None),
    # the message itself: finished once
    (TypeError("add() missing 1 required positional argument: 'y'"), Rejection.ARGUMENTS),
    (kombu.exceptions.EncodeError(TypeError("Object of type X is not JSON serializable")),
     Rejection.SERIALIZATION),
    (kombu.exceptions.SerializerNotInstalled("No encoder installed for nope"),
     Rejection.SERIALIZATION),
    (kombu.exceptions.ContentDisallowed("pickle"), Rejection.SERIALIZATION),
    (ValueError("ISO string too short"), Rejection.INVALID),
    (UnicodeEncodeError("ascii", "é", 0, 1, "ordinal not in range"), Rejection.INVALID),
    (QueueNotFound("Queue 'nowhere' missing from task_queues"), Rejection.ROUTING),
    (amqp.exceptions.NotFound("no exchange 'x' in vhost '/'"), Rejection.ROUTING),
    (amqp.exceptions.AccessRefused("access to exchange 'x' refused"), Rejection.REFUSED),
    (amqp.exceptions.PreconditionFailed("inequivalent arg 'x-max-priority'"), Rejection.REFUSED),
    (amqp.exceptions.ContentTooLarge("message too large"), Rejection.REFUSED),
]  # fmt: skip


@pytest.mark.parametrize(("exc", "reason"), TABLE, ids=lambda v: type(v).__name__)
def test_the_rule_by_exception_type(exc: BaseException, reason: Rejection | None) -> None:
    assert rejection(exc) is reason
    assert is_permanent(exc) is (reason is not None)


def add(x: int, y: int) -> int:
    return x + y


@pytest.mark.parametrize(
    ("call", "reason"),
    [
        ({"args": (1,)}, Rejection.ARGUMENTS),
        ({"args": (1, 2), "kwargs": {"z": 3}}, Rejection.ARGUMENTS),
        ({"args": (object(), 2)}, Rejection.SERIALIZATION),
        ({"args": (1, 2), "serializer": "nope"}, Rejection.SERIALIZATION),
        ({"args": (1, 2), "expires": "not a date"}, Rejection.INVALID),
        ({"args": (1, 2), "queue": "nowhere"}, Rejection.ROUTING),
    ],
    ids=["missing-arg", "unknown-kwarg", "unserializable", "serializer", "expires", "queue"],
)
def test_what_celery_raises_for_a_message_that_cannot_go(
    call: dict[str, object], reason: Rejection
) -> None:
    app = Celery("failures", set_as_current=False)
    app.conf.update(broker_url="memory://", task_create_missing_queues=False)
    task = app.task(name="failures.add")(add)
    with pytest.raises(Exception) as raised:
        task.apply_async(**call)
    assert rejection(raised.value) is reason
