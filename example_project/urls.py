"""URLs: the demo's status page at ``/`` and the Django admin at ``/admin/``."""

from __future__ import annotations

from django.contrib import admin
from django.urls import path

from .demoapp import views

urlpatterns = [
    path("", views.index, name="index"),
    path("admin/", admin.site.urls),
]
