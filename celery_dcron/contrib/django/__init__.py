"""Django integration: dynamic tasks managed in the Django admin.

Add ``"celery_dcron.contrib.django"`` to ``INSTALLED_APPS`` (extra ``django``:
``pip install "celery-dcron[django]"``), run ``migrate``, and the admin gets a
*Dynamic tasks* page and a *Cluster* page. The database is the durable copy of every
admin-managed task: saves and deletes reach the Redis registry when their transaction
commits (the rows of one transaction in one batch), and
:func:`~celery_dcron.contrib.django.sync.reconcile` (the ``dcron_sync`` management
command, and the beat instances: in full on start and after Redis lost its data,
incrementally every ``dcron_reconcile_interval``, one process at a time) writes back
whatever the registry is missing.
"""
