"""Django integration: ``"celery_durable.contrib.django"`` in ``INSTALLED_APPS``.

- A publish inside ``transaction.atomic()`` on the database the broker URL
  names joins that transaction: it rolls back with the block (savepoints
  included) and becomes visible at commit. ``delay_on_commit()`` and
  ``apply_async_on_commit()`` publish at once inside such a block, so a crash
  between commit and publish cannot lose the task. Celery's publishes on a
  task's behalf (retry, replace, add_to_chord, callbacks) never join.
- Admin pages over the schema's tables and views: workflows (resume, cancel,
  restart from a step), dead letters (requeue, purge) and queues.

Settings are read from Django's settings with Celery's ``CELERY_`` prefix
(see :mod:`celery_durable.contrib.django.conf`). Needs Django 4.2+ on
psycopg 3 (``pip install 'celery-durable[django]'``).
"""
