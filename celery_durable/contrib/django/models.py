"""Unmanaged models over the schema's tables and views, for the admin (Django never migrates them).

``db_table`` names the schema the Celery app keeps each table in, read when
the models load: workflows in the result backend's (``conf.backend_schema()``,
where ``workflows.*`` reads and changes them), queues, dead letters and periodic
tasks in the broker's (``conf.broker_schema()``). Rows are read through the alias ``CELERY_DURABLE_DATABASE``
(default ``default``). Changes go through celery_durable's own functions,
never through model saves.
"""

from __future__ import annotations

from django.db import models

from . import conf


def _table(schema: str, name: str) -> str:
    # Django quotes db_table as a whole; these inner quotes make it "schema"."name".
    return f'{schema}"."{name}'


class DurableManager(models.Manager):
    def get_queryset(self) -> models.QuerySet:
        return super().get_queryset().using(conf.database_alias() or "default")


class Workflow(models.Model):
    """A durable chain, from the ``workflows`` view."""

    id = models.TextField(primary_key=True)
    name = models.TextField(null=True)
    status = models.TextField()
    current_step = models.IntegerField()
    step_count = models.IntegerField()
    current_task = models.TextField(null=True)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()
    age = models.DurationField()
    stalled = models.BooleanField()
    error = models.TextField(null=True)

    objects = DurableManager()

    class Meta:
        managed = False
        db_table = _table(conf.backend_schema(), "workflows")
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name or 'workflow'} {self.id}"


class DeadLetter(models.Model):
    """A message the transport set aside, from the ``dead_letter`` table."""

    id = models.BigIntegerField(primary_key=True)
    queue = models.TextField()
    task = models.TextField(null=True)
    reason = models.TextField()
    delivery_count = models.IntegerField()
    payload = models.TextField()
    created_at = models.DateTimeField()
    dead_at = models.DateTimeField()

    objects = DurableManager()

    class Meta:
        managed = False
        db_table = _table(conf.broker_schema(), "dead_letter")
        ordering = ["-dead_at"]

    def __str__(self) -> str:
        return f"dead letter {self.id} ({self.task or 'no task'} on {self.queue})"


class Queue(models.Model):
    """A declared queue with its message counts, from the ``queues`` view."""

    queue = models.TextField(primary_key=True)
    depth = models.BigIntegerField()
    ready = models.BigIntegerField()
    delayed = models.BigIntegerField()
    leased = models.BigIntegerField()
    oldest = models.DateTimeField(null=True)
    oldest_age = models.DurationField(null=True)

    objects = DurableManager()

    class Meta:
        managed = False
        db_table = _table(conf.broker_schema(), "queues")
        ordering = ["queue"]

    def __str__(self) -> str:
        return self.queue


class BeatEntry(models.Model):
    """A periodic task of ``celery_durable.beat:Scheduler``, from the ``beat_entries`` view (the broker's schema)."""

    name = models.TextField(primary_key=True)
    task = models.TextField()
    schedule = models.JSONField()
    enabled = models.BooleanField()
    origin = models.TextField()
    catch_up = models.TextField()
    next_run_at = models.DateTimeField(null=True)
    last_run_at = models.DateTimeField()
    last_sent_at = models.DateTimeField(null=True)
    last_task_id = models.TextField(null=True)
    last_status = models.TextField(null=True)
    total_run_count = models.BigIntegerField()
    skipped_run_count = models.BigIntegerField()
    run_requested_at = models.DateTimeField(null=True)
    error = models.TextField(null=True)
    overdue = models.BooleanField()
    beat_holder = models.TextField(null=True)
    beat_lease_live = models.BooleanField()

    objects = DurableManager()

    class Meta:
        managed = False
        db_table = _table(conf.broker_schema(), "beat_entries")
        ordering = ["name"]
        verbose_name = "periodic task"
        verbose_name_plural = "periodic tasks"

    def __str__(self) -> str:
        return self.name
