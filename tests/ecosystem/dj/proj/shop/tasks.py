import os

from celery import shared_task
from django.db import transaction

from .models import Execution, Order


@shared_task
def record(tag):
    Execution.objects.create(tag=tag, pid=os.getpid())
    return tag


@shared_task
def add(x, y):
    return x + y


@shared_task
def flaky(value, tag):
    """Fails until a row tagged ``fixed:<tag>`` exists (a test "deploys the fix")."""
    Execution.objects.create(tag=tag, pid=os.getpid())
    if not Execution.objects.filter(tag=f"fixed:{tag}").exists():
        raise RuntimeError(f"{tag} is not fixed yet")
    return value + 1


# -- Celery's publishes on a task's behalf, from inside transaction.atomic() ---------------------

def _attempt(tag, request):
    Execution.objects.create(tag=f"{tag}:attempt{request.retries}", pid=os.getpid())  # outside any block


@shared_task(bind=True, max_retries=3)
def retry_in_atomic(self, tag):
    """The usual pattern: an outside call fails inside the block, the task retries."""
    _attempt(tag, self.request)
    with transaction.atomic():
        Order.objects.create(number=self.request.retries)
        if self.request.retries == 0:
            raise self.retry(countdown=1)
    return self.request.retries


@shared_task(bind=True)
def replace_in_atomic(self, tag):
    _attempt(tag, self.request)
    with transaction.atomic():
        Order.objects.create(number=100)
        raise self.replace(record.si(f"{tag}:replacement"))


@shared_task(bind=True)
def delay_in_atomic(self, tag, fail):
    """The task's own publish inside its block: it rolls back with the block."""
    try:
        with transaction.atomic():
            record.delay(f"{tag}:inner")
            if fail:
                raise RuntimeError("the block fails")
    except RuntimeError:
        pass
    return tag


@shared_task(bind=True)
def grow_chord_in_atomic(self, tag):
    """A chord member that adds a part to its chord inside a block that then rolls back."""
    try:
        with transaction.atomic():
            self.add_to_chord(record.si(f"{tag}:added"))
            raise RuntimeError("the block fails after add_to_chord")
    except RuntimeError:
        pass
    return tag


@shared_task
def collect(values):
    return sorted(values)


@shared_task
def fail_in_atomic(tag):
    with transaction.atomic():
        Order.objects.create(number=200)
        raise ValueError(f"{tag} fails inside its block")
