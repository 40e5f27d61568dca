import os

from celery import Celery

import celery_durable  # noqa: F401  (registers the postgresql:// broker scheme)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop_site.settings")

app = Celery("shop_site")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
