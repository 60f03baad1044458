"""The celery_dcron example project: a small Django site with a Celery app.

As the Celery docs recommend for Django, importing the project loads the Celery app so
that ``@shared_task`` binds to it.
"""

from .celery import app as celery_app

__all__ = ["celery_app"]
