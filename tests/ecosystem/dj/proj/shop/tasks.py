import os

from celery import shared_task

from .models import Execution


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
