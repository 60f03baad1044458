"""Django management commands of celery_dcron."""
