"""``python -m tests.ecosystem.dj.split_schemas URL``: the admin of a project whose broker and result
backend keep their rows in different schemas (Django settings are per process, hence a process).

``URL`` names an empty database. Prints, as JSON, what the admin shows of one durable workflow:
whether the list has it, the detail page's status and whether it shows the step, and the
queues page (broker side).
"""

from __future__ import annotations

import json
import sys
import uuid

import django
import psycopg
from django.conf import settings

from .proj.settings import build


def main(url: str) -> dict:
    broker_schema, backend_schema = f"brk_{uuid.uuid4().hex[:6]}", f"res_{uuid.uuid4().hex[:6]}"
    values = build(url, broker_schema)
    values["CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS"] = {"schema": backend_schema}
    settings.configure(**values)
    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.test import Client
    from django.urls import reverse

    from celery_durable import durable_chain
    from celery_durable.db import dsn, migrate

    from .proj.celery_app import app
    from .proj.shop.tasks import add

    call_command("migrate", verbosity=0)
    with psycopg.connect(dsn.from_url(url), autocommit=True) as conn:
        migrate.ensure_schema(conn, broker_schema)
        migrate.ensure_schema(conn, backend_schema)
    wf = durable_chain(add.s(1, 2)).apply_async()  # no worker: its row and first message are enough
    client = Client()
    client.force_login(User.objects.create_superuser("admin", "admin@example.com", "pw"))
    listed = client.get(reverse("admin:celery_durable_workflow_changelist"))
    detail = client.get(reverse("admin:celery_durable_workflow_change", args=[wf.id]))
    queues = client.get(reverse("admin:celery_durable_queue_changelist"))
    done = client.post(reverse("admin:celery_durable_workflow_changelist"),
                       {"index": 0, "action": "cancel", "_selected_action": [wf.id]}, follow=True)
    app.close()
    return {
        "listed": wf.id in listed.content.decode(),
        "detail_status": detail.status_code,
        "detail_shows_step": "tests.ecosystem.dj.proj.shop.tasks.add" in detail.content.decode(),
        "queue_listed": ">celery<" in queues.content.decode(),
        "cancelled": "Cancelled 1 workflow(s)" in done.content.decode(),
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
