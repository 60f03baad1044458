"""Would this Celery app send that task with those arguments? One rule, two callers.

The beat instances (:mod:`celery_dcron.scheduler`) skip and log an entry that fails it;
the API, the CLI and the admin (:mod:`celery_dcron.api`) refuse it. Each adds its own
fix to the reason (a setting, a keyword argument or a flag).

- A task the app does not know is sent by name, as Celery beat does; refusing it is
  the caller's choice (``dcron_check_tasks``, ``check_tasks=``).
- The args and kwargs of a task the app knows must fit the task's signature, as
  Celery's ``apply_async`` checks them before sending (its ``__header__``, skipped when
  the task says ``typing=False``); a class-based task is checked against ``run``.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["argument_mismatch", "load_task_modules"]

#: ``inspect.signature(task.run)`` per task object (None: it has none to check).
_SIGNATURES: weakref.WeakKeyDictionary[Any, inspect.Signature | None] = weakref.WeakKeyDictionary()
#: Apps whose task modules were imported by :func:`load_task_modules`.
_LOADED: weakref.WeakSet[Any] = weakref.WeakSet()


def load_task_modules(app: Any) -> None:
    """Import the app's task modules as a worker or beat does at start-up, once per app.

    ``loader.import_default_modules()`` sends ``import_modules`` (on which the lazy
    ``app.autodiscover_tasks()`` and Celery's Django fix-up act), then imports the
    ``imports`` and ``include`` modules. Its errors propagate.
    """
    if app in _LOADED:
        return
    app.loader.import_default_modules()
    _LOADED.add(app)


def argument_mismatch(
    task: Any, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> tuple[str, str] | None:
    """``(field, reason)`` when ``args``/``kwargs`` do not fit the signature of ``task``
    (a registered Celery task), else None. ``field`` is ``"args"`` or ``"kwargs"``; the
    reason starts with it and names the task's signature."""
    if not getattr(task, "typing", True):  # Celery's own opt-out: typing=False
        return None
    header = getattr(task, "__header__", None)
    if header is not None:  # Celery's check: a compiled empty function, the fast path
        try:
            header(*args, **kwargs)
        except TypeError:
            pass
        else:
            return None
    signature = _signature(task)
    if signature is None:
        return None
    field = "args"
    try:
        signature.bind_partial(*args)
        field = "kwargs"
        signature.bind_partial(*args, **kwargs)
        field = "args"  # both fit on their own: a required argument is missing
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        shown = signature.replace(return_annotation=inspect.Signature.empty)
        return field, f"{field}: do not fit {task.name}{shown}: {exc}"
    return None


def _signature(task: Any) -> inspect.Signature | None:
    try:
        return _SIGNATURES[task]
    except KeyError:
        pass
    except TypeError:  # not weakly referenceable: no cache
        return _inspect(task)
    signature = _SIGNATURES[task] = _inspect(task)
    return signature


def _inspect(task: Any) -> inspect.Signature | None:
    try:
        return inspect.signature(task.run)
    except (TypeError, ValueError):  # a callable Python cannot introspect: nothing to check
        return None
