"""The Django app: joins atomic blocks on start, registers the admin pages."""

from __future__ import annotations

from django.apps import AppConfig


class CeleryDurableConfig(AppConfig):
    name = "celery_durable.contrib.django"
    label = "celery_durable"
    verbose_name = "Celery durable"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from .join import install

        install()
