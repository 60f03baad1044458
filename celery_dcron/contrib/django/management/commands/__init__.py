"""``manage.py dcron_sync``: reconcile the DynamicTask rows with the registry."""
