"""The engine: decides what this instance fires, claims it, publishes it.

:class:`Engine` (:mod:`.loop`) runs the scheduling loop and wires its parts, each in its
own module:

=================  ==============================================================
:mod:`.view`       entries, run states, the owned set, change signals
:mod:`.timeline`   the due heap: when each owned entry is due next
:mod:`.claims`     one pass: plan the due ticks, claim them in chunks
:mod:`.dispatch`   publish, mark sent, re-publish unsent claims, failure hooks
:mod:`.recovery`   everything about a Redis data loss
:mod:`.requests`   run-now requests, after-run actions
=================  ==============================================================

The tick rules they share with ``celery dcron status`` and the admin are in
:mod:`celery_dcron.planning`.
"""

from __future__ import annotations

from ..logfields import SUMMARY_DETAILS
from .claims import CLAIM_CHUNK
from .dispatch import PUBLISH_BATCH, ErrorHook, PublishBatch, Publisher
from .loop import Engine
from .view import EntryCheck

__all__ = [
    "CLAIM_CHUNK",
    "PUBLISH_BATCH",
    "SUMMARY_DETAILS",
    "Engine",
    "EntryCheck",
    "ErrorHook",
    "PublishBatch",
    "Publisher",
]
