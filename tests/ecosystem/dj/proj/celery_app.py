"""The project's Celery app, configured from Django's settings (namespace CELERY)."""

from celery import Celery

import celery_durable  # noqa: F401  (registers the postgresql:// broker scheme)
from celery_durable.compat import DJANGO_TASK_CLS

# The worker gets DjangoTask from Celery's Django fixup (DJANGO_SETTINGS_MODULE is set);
# the test process configures Django in-process, so it names the class itself.
app = Celery("proj", task_cls=DJANGO_TASK_CLS)
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
