"""Signals sent by a running scheduler instance (Celery's dispatch, like ``beat_init``).

Connect a receiver anywhere the beat process imports::

    from celery_dcron import signals

    @signals.node_left.connect
    def on_node_left(sender, node, **kwargs):
        log.warning("beat instance %s left", node.id)

Every signal is sent with ``sender`` = the :class:`~celery_dcron.engine.Engine` of this
instance. A receiver that raises is logged and does not stop the scheduler.

=================  ===========================================================
signal             keyword arguments
=================  ===========================================================
node_joined        ``node`` (:class:`~celery_dcron.entries.Node`) - a node became working
node_left          ``node`` - a node left or expired
entry_added        ``entry`` (:class:`~celery_dcron.entries.EntrySpec`)
entry_changed      ``entry`` (new definition), ``old`` (previous one)
entry_removed      ``entry`` (the last definition seen)
publish_failed     ``entry``, ``tick`` (:class:`~celery_dcron.entries.Tick`), ``exc``,
                   ``permanent`` (True: it can never succeed, the tick is not retried;
                   see :mod:`celery_dcron.engine.failures`)
reconcile          ``reason``: ``"start"``, ``"reset"`` (Redis lost its data),
                   ``"reconnect"`` or ``"periodic"`` (``dcron_reconcile_interval``)
=================  ===========================================================

``reconcile`` is how an external source of entries (a database) keeps the registry
whole: a receiver writes the entries it owns back when they are missing or differ. On
``"reset"`` it runs after the instance restored the anchors it remembers and before it
restores its last ticks, so restored entries keep their tick grid. The Django app
:mod:`celery_dcron.contrib.django` connects one.
"""

from __future__ import annotations

from celery.utils.dispatch import Signal

__all__ = [
    "entry_added",
    "entry_changed",
    "entry_removed",
    "node_joined",
    "node_left",
    "publish_failed",
    "reconcile",
]

node_joined = Signal(name="dcron_node_joined", providing_args=["node"])
node_left = Signal(name="dcron_node_left", providing_args=["node"])
entry_added = Signal(name="dcron_entry_added", providing_args=["entry"])
entry_changed = Signal(name="dcron_entry_changed", providing_args=["entry", "old"])
entry_removed = Signal(name="dcron_entry_removed", providing_args=["entry"])
publish_failed = Signal(
    name="dcron_publish_failed", providing_args=["entry", "tick", "exc", "permanent"]
)
reconcile = Signal(name="dcron_reconcile", providing_args=["reason"])
