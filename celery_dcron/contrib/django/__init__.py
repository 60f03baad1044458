"""Django integration: dynamic tasks managed in the Django admin.

Add ``"celery_dcron.contrib.django"`` to ``INSTALLED_APPS`` (extra ``django``:
``pip install "celery-dcron[django]"``), run ``migrate``, and the admin gets a
*Dynamic tasks* page and a *Cluster* page. The database is the durable copy of every
admin-managed task: saves and deletes reach the Redis registry when their transaction
commits, and :func:`~celery_dcron.contrib.django.sync.reconcile` (the ``dcron_sync``
management command, and every beat instance on start, after Redis lost its data and every
``dcron_reconcile_interval``) writes back whatever the registry is missing.
"""
