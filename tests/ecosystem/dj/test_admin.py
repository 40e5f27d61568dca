"""The admin pages through Django's test client: workflows (resume, cancel, restart from a step),
dead letters (requeue, purge) and queues, on a non-default schema, with a real worker."""

from __future__ import annotations

import time

import pytest
from django.urls import reverse

from celery_durable import durable_chain, workflows

from .conftest import SCHEMA
from .proj.shop.models import Execution
from .proj.shop.tasks import add, flaky

pytestmark = pytest.mark.django_db(transaction=True)
ACTION = "django.contrib.admin.actions"


def wait(check, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, what
        time.sleep(0.1)
    return value


def status(app, wid: str) -> str:
    return workflows.get_workflow(app, workflow_id=wid)["status"]


def test_models_follow_the_configured_schema():
    from celery_durable.contrib.django.models import DeadLetter, Queue, Workflow

    assert SCHEMA != "celery_durable"
    assert [m._meta.db_table for m in (Workflow, DeadLetter, Queue)] == [
        f'{SCHEMA}"."workflows', f'{SCHEMA}"."dead_letter', f'{SCHEMA}"."queues']


def test_workflow_pages_and_actions(admin_client, django_project, worker):
    app = django_project
    wf = durable_chain(add.s(1, 2), flaky.s("wf"), add.s(10)).apply_async()
    wid = wf.id
    wait(lambda: status(app, wid) == "failed", "the flaky step to fail the workflow")

    page = admin_client.get(reverse("admin:celery_durable_workflow_changelist"))
    assert page.status_code == 200
    assert wid in page.content.decode() and "failed" in page.content.decode()

    detail = admin_client.get(reverse("admin:celery_durable_workflow_change", args=[wid])).content.decode()
    assert "tests.ecosystem.dj.proj.shop.tasks.flaky" in detail
    assert "<code>3</code>" in detail  # step 0's checkpointed result
    assert "Restart from a step" in detail
    assert 'name="_save"' not in detail  # read-only: no save button

    Execution.objects.create(tag="fixed:wf", pid=0)  # "deploy the fix", then resume
    changelist = reverse("admin:celery_durable_workflow_changelist")
    done = admin_client.post(changelist, {"index": 0, "action": "resume", "_selected_action": [wid]}, follow=True)
    assert "Resumed 1 workflow(s)" in done.content.decode()
    assert wf.get(timeout=60) == 14
    assert Execution.objects.filter(tag="wf").count() == 2

    restart = reverse("admin:celery_durable_workflow_restart", args=[wid])
    assert admin_client.get(restart).status_code == 200
    done = admin_client.post(restart, {"step": "1", "args": ""}, follow=True)
    assert f"Restarted {wid} from step 1" in done.content.decode()
    wait(lambda: Execution.objects.filter(tag="wf").count() == 3, "the restarted step to run")
    wait(lambda: status(app, wid) == "succeeded", "the restarted workflow to finish")

    second = durable_chain(flaky.s(0, "never")).apply_async()
    wait(lambda: status(app, second.id) == "failed", "the second workflow to fail")
    done = admin_client.post(changelist, {"index": 0, "action": "cancel", "_selected_action": [second.id]}, follow=True)
    assert "Cancelled 1 workflow(s)" in done.content.decode()
    assert status(app, second.id) == "cancelled"


def test_dead_letters_requeue_and_purge(admin_client, django_project, broker, worker):
    from celery_durable.contrib.django.models import DeadLetter

    django_project.send_task("shop.tasks.not_deployed")  # the worker rejects an unknown task
    first = wait(lambda: DeadLetter.objects.first(), "the unknown task to be dead-lettered")
    changelist = reverse("admin:celery_durable_deadletter_changelist")
    page = admin_client.get(changelist).content.decode()
    assert "shop.tasks.not_deployed" in page and "delete_selected" not in page

    done = admin_client.post(changelist, {"index": 0, "action": "requeue", "_selected_action": [first.id]}, follow=True)
    assert "Requeued 1 message(s)" in done.content.decode()
    # Back in its queue, delivered again, rejected again: a new dead letter, the old one gone.
    again = wait(lambda: DeadLetter.objects.exclude(id=first.id).first(), "the requeued message to come back")
    assert not DeadLetter.objects.filter(id=first.id).exists()
    assert again.task == "shop.tasks.not_deployed"

    done = admin_client.post(changelist, {"index": 0, "action": "purge", "_selected_action": [again.id]}, follow=True)
    assert "Purged 1 dead letter(s)" in done.content.decode()
    assert not DeadLetter.objects.exists()
    assert broker.q("SELECT count(*) FROM {s}.dead_letter")[0][0] == 0


def test_queues_page_shows_depth(admin_client, django_project, broker):
    django_project.send_task("shop.tasks.add", args=(1, 1), queue="parked", countdown=3600)
    page = admin_client.get(reverse("admin:celery_durable_queue_changelist")).content.decode()
    assert "parked" in page
    row = page[page.index("parked"):].split("</tr>", 1)[0]
    assert [cell.split(">")[-1] for cell in row.split("</td>")[:4]] == ["1", "0", "1", "0"]  # depth ready delayed leased
    assert admin_client.get(reverse("admin:celery_durable_queue_add")).status_code == 403


def test_pages_work_in_a_server_thread(live_server, admin_client, django_project, worker, pg_url):
    """A real server answers from its own threads, where Celery's current app is not the project's.

    Other apps on other schemas live in the process too (as in a test suite): the page must
    still use the project's.
    """
    import urllib.request

    from celery import Celery

    others = [Celery(f"other{i}", broker=pg_url, backend=pg_url, set_as_current=False) for i in range(50)]
    for i, other in enumerate(others):
        other.conf.broker_transport_options = other.conf.result_backend_transport_options = {"schema": f"another{i}"}
    wf = durable_chain(add.s(20, 22), add.s(0)).apply_async()
    assert wf.get(timeout=60) == 42
    cookie = f"sessionid={admin_client.cookies['sessionid'].value}"
    url = live_server.url + reverse("admin:celery_durable_workflow_change", args=[wf.id])
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Cookie": cookie}), timeout=60) as response:
        page = response.read().decode()
    assert "<code>42</code>" in page and "succeeded" in page
    assert len(others) == 50  # alive until here


def test_viewers_see_but_cannot_act(client, django_user_model, django_project):
    from django.contrib.auth.models import Permission

    viewer = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.set(Permission.objects.filter(codename__in=["view_workflow", "view_deadletter"]))
    client.force_login(viewer)
    wf = durable_chain(add.s(1, 1)).apply_async()  # no worker needed: it only has to exist
    page = client.get(reverse("admin:celery_durable_workflow_changelist")).content.decode()
    assert wf.id in page and 'name="action"' not in page
    assert client.get(reverse("admin:celery_durable_workflow_restart", args=[wf.id])).status_code == 403
    assert 'name="action"' not in client.get(reverse("admin:celery_durable_deadletter_changelist")).content.decode()


class _Touch:
    """Unpickling this runs ``open(path, "x")``: the file is the proof that code ran."""

    def __init__(self, path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "x"))


def test_a_pickled_checkpoint_is_shown_by_type_and_size(admin_client, django_project, broker, worker, tmp_path):
    """A checkpoint rewritten to pickle (anyone with DML on the schema can): the page never unpickles it."""
    import pickle

    app = django_project
    wf = durable_chain(add.s(1, 2), add.s(10)).apply_async()
    assert wf.get(timeout=60) == 13
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(_Touch(marker))
    broker.q("UPDATE {s}.checkpoint SET content_type = 'application/x-python-serialize', result = %s "
             "WHERE workflow_id = %s AND path = '0'", payload, wf.id)
    page = admin_client.get(reverse("admin:celery_durable_workflow_change", args=[wf.id]))
    assert not marker.exists(), "the admin page unpickled a stored checkpoint"
    assert page.status_code == 200
    assert f"application/x-python-serialize, {len(payload)} bytes" in page.content.decode()
    assert "<code>13</code>" in page.content.decode()  # the step it can read is shown as before
    assert status(app, wf.id) == "succeeded"


def test_actions_leave_log_entries(admin_client, django_project, broker, worker):
    """Every action is in the admin's history (LogEntry), like Django's own changes."""
    from django.contrib.admin.models import CHANGE, DELETION, LogEntry

    from celery_durable.contrib.django.models import DeadLetter

    def logged(object_id, flag: int) -> list[str]:
        entries = LogEntry.objects.filter(object_id=str(object_id), action_flag=flag).order_by("action_time")
        return [e.change_message for e in entries]

    app = django_project
    wf = durable_chain(flaky.s(0, "logged")).apply_async()
    wait(lambda: status(app, wf.id) == "failed", "the flaky step to fail the workflow")
    Execution.objects.create(tag="fixed:logged", pid=0)
    changelist = reverse("admin:celery_durable_workflow_changelist")
    admin_client.post(changelist, {"index": 0, "action": "resume", "_selected_action": [wf.id]}, follow=True)
    assert wf.get(timeout=60) == 1
    admin_client.post(reverse("admin:celery_durable_workflow_restart", args=[wf.id]), {"step": "0", "args": '[5, "logged"]'})
    wait(lambda: Execution.objects.filter(tag="logged").count() == 3, "the restarted step to run")
    other = durable_chain(flaky.s(0, "never-logged")).apply_async()
    admin_client.post(changelist, {"index": 0, "action": "cancel", "_selected_action": [other.id]}, follow=True)
    assert logged(wf.id, CHANGE) == ["Resumed", 'Restarted from step 0 with args [5, "logged"]']
    assert logged(other.id, CHANGE) == ["Cancelled"]

    django_project.send_task("shop.tasks.not_deployed_either")
    first = wait(lambda: DeadLetter.objects.first(), "the unknown task to be dead-lettered")
    dead = reverse("admin:celery_durable_deadletter_changelist")
    admin_client.post(dead, {"index": 0, "action": "requeue", "_selected_action": [first.id]}, follow=True)
    again = wait(lambda: DeadLetter.objects.exclude(id=first.id).first(), "the requeued message to come back")
    admin_client.post(dead, {"index": 0, "action": "purge", "_selected_action": [again.id]}, follow=True)
    assert logged(first.id, CHANGE) == ["Requeued"]
    assert len(logged(again.id, DELETION)) == 1


def test_a_bulk_action_failing_partway_says_what_it_changed(admin_client, django_project):
    """Each workflow is its own transaction: when one fails (here its stored tree is unreadable),
    the page names the ones already resumed and the one that failed, and the rest still go."""
    from django.contrib.admin.models import CHANGE, LogEntry

    from .conftest import Broker

    app = django_project
    flows = [durable_chain(add.s(i, i)).apply_async(countdown=3600) for i in range(3)]
    for wf in flows:
        workflows.cancel_workflow(app, wf.id)
    broken = flows[1].id
    Broker().q("UPDATE {s}.workflow_node SET size = size + 1 WHERE workflow_id = %s AND path = ''", broken)
    page = admin_client.post(reverse("admin:celery_durable_workflow_changelist"),
                             {"index": 0, "action": "resume", "_selected_action": [wf.id for wf in flows]},
                             follow=True).content.decode()
    fine = [flows[0].id, flows[2].id]
    assert "Resumed 2 workflow(s)" in page and all(wid in page for wid in fine)
    assert f"{broken}: WorkflowError" in page
    assert [status(app, wid) for wid in fine] == ["running", "running"]
    assert sorted(LogEntry.objects.filter(action_flag=CHANGE, object_id__in=[wf.id for wf in flows])
                  .values_list("object_id", flat=True)) == sorted(fine)


def test_workflow_pages_read_the_backends_schema_when_the_brokers_differs(django_project):
    """Workflows live in the result backend's schema, queues and dead letters in the broker's: the
    list, the detail page and the actions must all read the workflow where it is."""
    import json
    import subprocess
    import sys
    import uuid

    import psycopg

    from .conftest import SERVER

    name = f"cd_split_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(SERVER, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        run = subprocess.run([sys.executable, "-m", "tests.ecosystem.dj.split_schemas",
                              f"{SERVER.rpartition('/')[0]}/{name}"], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr[-3000:]
        shown = json.loads(run.stdout.strip().splitlines()[-1])
    finally:
        with psycopg.connect(SERVER, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    assert shown == {"listed": True, "detail_status": 200, "detail_shows_step": True, "queue_listed": True,
                     "cancelled": True}
