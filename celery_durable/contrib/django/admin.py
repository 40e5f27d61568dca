"""Admin pages: workflows (resume, cancel, restart from a step), dead letters (requeue, purge), queues,
periodic tasks (add, change, pause, resume, run now, remove).

Every page is read-only: a workflow's or message's row is changed only by
celery_durable's own functions, which keep the invariants (one transaction
under the row lock, the step's message sent with it). Acting needs the
model's change permission ("operate" below); purging needs delete. Each
action is in the admin's history (a LogEntry per object changed), and a bulk
action on workflows acts on each in its own transaction: the page names the
ones it changed and each that failed, with why.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import connections
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from ... import content, workflows
from ...beat import entries, schedules
from ...dead_letters import requeue_dead_letters
from ...exceptions import DurableError
from . import conf
from .models import BeatEntry, DeadLetter, Queue, Workflow

logger = logging.getLogger(__name__)


class ReadOnlyAdmin(admin.ModelAdmin):
    """View pages only; actions that need ``operate`` check the model's change permission."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_operate_permission(self, request: HttpRequest) -> bool:
        opts = self.opts
        return request.user.has_perm(f"{opts.app_label}.change_{opts.model_name}")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [f.name for f in self.opts.fields] + list(self.readonly_fields)


@admin.register(Workflow)
class WorkflowAdmin(ReadOnlyAdmin):
    list_display = ("id", "name", "status", "current_step", "step_count", "current_task", "age", "stalled",
                    "updated_at")
    list_filter = ("status", "stalled")
    search_fields = ("id", "name")
    readonly_fields = ("steps", "operate")
    actions = ("resume", "cancel")

    @admin.display(description="steps, checkpoints and results")
    def steps(self, obj: Workflow) -> str:
        app = conf.celery_app()
        # A page never unpickles, whatever the app accepts: what it does not decode shows as type and size.
        found = workflows.get_workflow(app, workflow_id=obj.id, accept=content.shown_types(app))
        if found is None:
            return "-"
        done: dict[Any, list[Any]] = {}
        for mark in found["checkpoints"]:
            done.setdefault(mark["step"], []).append(mark)
        rows = []
        for step in found["steps"]:
            marks = done.get(step["index"], [])
            state = "current" if step["index"] == found["current_step"] and found["status"] != "succeeded" else ""
            result = "; ".join(_short(m.get("result")) for m in marks) if marks else ""
            finished = max((m["finished_at"] for m in marks), default=None)
            attempts = sum(m["attempts"] for m in marks) if marks else ""
            rows.append((step["index"], step["task"], state or ("done" if marks else ""), attempts, finished or "",
                         result))
        body = format_html_join(
            "", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>", rows)
        return format_html(
            '<table class="celery-durable-steps"><thead><tr><th>step</th><th>task</th><th>state</th>'
            "<th>attempts</th><th>finished</th><th>result</th></tr></thead><tbody>{}</tbody></table>", body)

    @admin.display(description="operate")
    def operate(self, obj: Workflow) -> str:
        url = reverse("admin:celery_durable_workflow_restart", args=[obj.id])
        return format_html('<a class="button" href="{}">Restart from a step…</a>', url)

    @admin.action(description="Resume selected workflows (re-send unfinished steps not queued or running)",
                  permissions=["operate"])
    def resume(self, request: HttpRequest, queryset: Any) -> None:
        self._each(request, queryset, "Resumed", lambda wid: workflows.resume_workflow(conf.celery_app(), wid))

    @admin.action(description="Cancel selected workflows (no further step)", permissions=["operate"])
    def cancel(self, request: HttpRequest, queryset: Any) -> None:
        self._each(request, queryset, "Cancelled", lambda wid: workflows.cancel_workflow(conf.celery_app(), wid))

    def _each(self, request: HttpRequest, queryset: Any, verb: str, act: Any) -> None:
        """Act on each workflow in its own transaction; say which changed (logged) and which failed, and why."""
        done, failed = [], []
        for obj in queryset:
            try:
                if act(obj.id) is False:
                    continue  # nothing to do (cancel: it had already ended)
            except Exception as exc:  # noqa: BLE001 - the others are independent: report it and go on
                if not isinstance(exc, DurableError):
                    logger.exception("admin action %r on workflow %s failed", verb, obj.id)
                failed.append(f"{obj.id}: {type(exc).__name__}: {exc}")
                continue
            self.log_change(request, obj, verb)
            done.append(obj.id)
        if done:
            self.message_user(request, f"{verb} {len(done)} workflow(s): {', '.join(done)}", messages.SUCCESS)
        if failed:
            self.message_user(request, f"Not {verb.lower()}, {len(failed)} workflow(s): " + "; ".join(failed),
                              messages.ERROR)

    def get_urls(self) -> list:
        view = self.admin_site.admin_view(self.restart_view)
        return [path("<path:object_id>/restart/", view, name="celery_durable_workflow_restart")] + super().get_urls()

    def restart_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        if not self.has_operate_permission(request):
            raise PermissionDenied
        obj = get_object_or_404(Workflow.objects.all(), pk=object_id)
        form = RestartForm(request.POST or None, step_count=obj.step_count)
        if request.method == "POST" and form.is_valid():
            try:
                sent = workflows.restart_workflow(conf.celery_app(), obj.id, form.cleaned_data["step"],
                                                  args=form.cleaned_data["args"])
            except DurableError as exc:
                self.message_user(request, str(exc), messages.ERROR)
            else:
                args = form.cleaned_data["args"]
                self.log_change(request, obj, f"Restarted from step {form.cleaned_data['step']}"
                                + (f" with args {json.dumps(args)}" if args is not None else ""))
                self.message_user(request, f"Restarted {obj.id} from step {form.cleaned_data['step']} "
                                           f"({len(sent)} task(s) sent)", messages.SUCCESS)
                return HttpResponseRedirect(reverse("admin:celery_durable_workflow_change", args=[obj.id]))
        context = {**self.admin_site.each_context(request), "opts": self.opts, "original": obj, "form": form,
                   "title": f"Restart {obj} from a step"}
        return TemplateResponse(request, "admin/celery_durable/workflow/restart.html", context)


class RestartForm(forms.Form):
    step = forms.TypedChoiceField(coerce=int, help_text="Checkpoints of this step and later ones are dropped.")
    args = forms.CharField(required=False, label="New arguments (JSON list, optional)",
                           help_text="Replaces the step's positional arguments; a single-task step only.")

    def __init__(self, *args: Any, step_count: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["step"].choices = [(i, str(i)) for i in range(step_count)]

    def clean_args(self) -> list | None:
        text = self.cleaned_data["args"].strip()
        if not text:
            return None
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise forms.ValidationError(f"not JSON: {exc}") from None
        return value if isinstance(value, list) else [value]


@admin.register(DeadLetter)
class DeadLetterAdmin(ReadOnlyAdmin):
    list_display = ("id", "queue", "task", "reason", "delivery_count", "dead_at")
    list_filter = ("queue",)
    search_fields = ("task", "reason")
    actions = ("requeue", "purge")

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        opts = self.opts
        return request.user.has_perm(f"{opts.app_label}.delete_{opts.model_name}")

    def get_actions(self, request: HttpRequest) -> dict:
        found = super().get_actions(request)
        found.pop("delete_selected", None)  # "purge" says what it does
        return found

    @admin.action(description="Requeue selected dead letters (back to their queue)", permissions=["operate"])
    def requeue(self, request: HttpRequest, queryset: Any) -> None:
        found = {obj.id: obj for obj in queryset}
        wrapper = connections[conf.database_alias() or "default"]
        wrapper.ensure_connection()
        moved = requeue_dead_letters(wrapper.connection, conf.broker_schema(), ids=list(found))  # one transaction
        for row in moved:
            self.log_change(request, found[row.dead_letter_id], "Requeued")
        self.message_user(request, f"Requeued {len(moved)} message(s)", messages.SUCCESS)

    @admin.action(description="Purge selected dead letters (delete them)", permissions=["delete"])
    def purge(self, request: HttpRequest, queryset: Any) -> None:
        doomed = list(queryset)
        if hasattr(self, "log_deletions"):  # Django 5.1+
            self.log_deletions(request, doomed)
        else:
            for obj in doomed:
                self.log_deletion(request, obj, str(obj))
        count, _ = queryset.delete()
        self.message_user(request, f"Purged {count} dead letter(s)", messages.SUCCESS)


@admin.register(Queue)
class QueueAdmin(ReadOnlyAdmin):
    list_display = ("queue", "depth", "ready", "delayed", "leased", "oldest_age")
    search_fields = ("queue",)
    actions = None


@admin.register(BeatEntry)
class BeatEntryAdmin(ReadOnlyAdmin):
    """Periodic tasks: every change goes through celery_durable.beat.entries.

    The active beat sees a change at its next tick.
    """

    list_display = ("name", "task", "schedule_text", "enabled", "origin", "next_run_at", "last_run_at", "last_task_id",
                    "last_status", "overdue", "error", "beat_holder")
    list_filter = ("enabled", "origin", "overdue")
    search_fields = ("name", "task")
    readonly_fields = ("schedule_text", "operate")
    actions = ("pause", "resume", "run_now", "remove")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.has_operate_permission(request)

    def has_remove_permission(self, request: HttpRequest) -> bool:
        opts = self.opts
        return request.user.has_perm(f"{opts.app_label}.delete_{opts.model_name}")

    def get_actions(self, request: HttpRequest) -> dict:
        found = super().get_actions(request)
        found.pop("delete_selected", None)  # "remove" says what it does
        return found

    @admin.display(description="schedule")
    def schedule_text(self, obj: BeatEntry) -> str:
        return schedules.describe(obj.schedule)

    @admin.display(description="operate")
    def operate(self, obj: BeatEntry) -> str:
        url = reverse("admin:celery_durable_beatentry_edit", args=[obj.name])
        return format_html('<a class="button" href="{}">Change…</a>', url)

    @admin.action(description="Pause selected periodic tasks", permissions=["operate"])
    def pause(self, request: HttpRequest, queryset: Any) -> None:
        self._each(request, queryset, "Paused", lambda name: entries.pause_entry(conf.celery_app(), name))

    @admin.action(description="Resume selected periodic tasks (their runs count from now)", permissions=["operate"])
    def resume(self, request: HttpRequest, queryset: Any) -> None:
        self._each(request, queryset, "Resumed", lambda name: entries.resume_entry(conf.celery_app(), name))

    @admin.action(description="Run selected periodic tasks now (once, by the active beat)", permissions=["operate"])
    def run_now(self, request: HttpRequest, queryset: Any) -> None:
        self._each(request, queryset, "Asked to run now", lambda name: entries.run_entry_now(conf.celery_app(), name))

    @admin.action(description="Remove selected periodic tasks (a beat_schedule one comes back at the next beat start)",
                  permissions=["remove"])
    def remove(self, request: HttpRequest, queryset: Any) -> None:
        self._each(request, queryset, "Removed", lambda name: entries.remove_entry(conf.celery_app(), name))

    def _each(self, request: HttpRequest, queryset: Any, verb: str, act: Any) -> None:
        done, failed = [], []
        for obj in queryset:
            try:
                act(obj.name)
            except DurableError as exc:
                failed.append(f"{obj.name}: {exc}")
                continue
            self.log_change(request, obj, verb)
            done.append(obj.name)
        if done:
            self.message_user(request, f"{verb}: {', '.join(done)}", messages.SUCCESS)
        if failed:
            self.message_user(request, f"Not {verb.lower()}: " + "; ".join(failed), messages.ERROR)

    def get_urls(self) -> list:
        view = self.admin_site.admin_view(self.edit_view)
        return [path("<path:object_id>/edit/", view, name="celery_durable_beatentry_edit")] + super().get_urls()

    def add_view(self, request: HttpRequest, form_url: str = "", extra_context: Any = None) -> HttpResponse:
        return self.edit_view(request, None)

    def edit_view(self, request: HttpRequest, object_id: str | None) -> HttpResponse:
        """Add a periodic task, or change one: the form writes through the schedule API in one transaction."""
        if not self.has_operate_permission(request):
            raise PermissionDenied
        obj = None if object_id is None else get_object_or_404(BeatEntry.objects.all(), pk=object_id)
        initial = {} if obj is None else EntryForm.initial_for(obj, conf.celery_app())
        form = EntryForm(request.POST or None, initial=initial, adding=obj is None)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                if obj is None:
                    entries.add_entry(conf.celery_app(), data["name"], data["task"], data["schedule"], data["args"],
                                      data["kwargs"], data["options"], catch_up=data["catch_up"])
                else:
                    entries.change_entry(conf.celery_app(), obj.name, task=data["task"], schedule=data["schedule"],
                                         args=data["args"], kwargs=data["kwargs"], options=data["options"],
                                         catch_up=data["catch_up"])
            except DurableError as exc:
                form.add_error(None, str(exc))
            else:
                saved = BeatEntry.objects.get(pk=data["name"] if obj is None else obj.name)
                if obj is None:
                    self.log_addition(request, saved, "Added")
                else:
                    self.log_change(request, saved, "Changed")
                self.message_user(request, f"{'Added' if obj is None else 'Changed'} periodic task {saved.name}; "
                                           "the active beat sees it at its next tick", messages.SUCCESS)
                return HttpResponseRedirect(reverse("admin:celery_durable_beatentry_change", args=[saved.name]))
        context = {**self.admin_site.each_context(request), "opts": self.opts, "original": obj, "form": form,
                   "title": "Add periodic task" if obj is None else f"Change periodic task {obj.name}"}
        return TemplateResponse(request, "admin/celery_durable/beatentry/edit.html", context)


class EntryForm(forms.Form):
    """A periodic task as the API takes it: one of an interval or a crontab line, arguments as JSON."""

    name = forms.CharField()
    task = forms.CharField(help_text="The task's registered name, e.g. shop.tasks.report.")
    every = forms.FloatField(required=False, min_value=0.001, label="Every (seconds)")
    cron = forms.CharField(required=False, label="Or a crontab line", help_text="minute hour day-of-month month "
                                                                                   "day-of-week, e.g. 0 9 * * mon-fri")
    timezone = forms.CharField(required=False, help_text="The crontab's time zone (e.g. Europe/Berlin); "
                                                         "empty: the app's.")
    args = forms.CharField(required=False, initial="[]", label="Args (JSON list)")
    kwargs = forms.CharField(required=False, initial="{}", label="Kwargs (JSON object)")
    options = forms.CharField(required=False, initial="{}", label="Options (JSON object)",
                              help_text='apply_async options, e.g. {"queue": "reports"}.')
    catch_up = forms.ChoiceField(choices=[(c, c) for c in schedules.CATCH_UP], initial=schedules.CATCH_UP_DEFAULT,
                                 help_text="Runs that fell due while no beat held the lease: the latest once, "
                                           "none, or each.")

    def __init__(self, *args: Any, adding: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not adding:
            self.fields["name"].disabled = True

    @staticmethod
    def initial_for(obj: BeatEntry, app: Any) -> dict:
        row = entries.list_entries(app, obj.name)[0]
        stored = obj.schedule
        cron = " ".join(str(stored.get(f, "*")) for f in ("minute", "hour", "day_of_month", "month_of_year",
                                                           "day_of_week")) if stored.get("type") == "crontab" else ""
        return {"name": obj.name, "task": obj.task, "every": stored.get("every"), "cron": cron,
                "timezone": stored.get("timezone") or "", "args": json.dumps(row["args"], default=str),
                "kwargs": json.dumps(row["kwargs"], default=str), "options": json.dumps(row["options"], default=str),
                "catch_up": obj.catch_up}

    def _json(self, field: str, kind: type) -> Any:
        text = (self.cleaned_data.get(field) or "").strip() or ("[]" if kind is list else "{}")
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise forms.ValidationError(f"not JSON: {exc}") from None
        if not isinstance(value, kind):
            raise forms.ValidationError(f"must be a JSON {'list' if kind is list else 'object'}")
        return value

    def clean_args(self) -> list:
        return self._json("args", list)

    def clean_kwargs(self) -> dict:
        return self._json("kwargs", dict)

    def clean_options(self) -> dict:
        return self._json("options", dict)

    def clean(self) -> dict:
        data = super().clean()
        every, cron, zone = data.get("every"), (data.get("cron") or "").strip(), (data.get("timezone") or "").strip()
        if (every is None) == (not cron):
            raise forms.ValidationError("give either an interval (every) or a crontab line")
        if every is not None:
            if zone:
                raise forms.ValidationError("a time zone goes with a crontab line")
            data["schedule"] = every
        else:
            fields = cron.split()
            if len(fields) != 5:
                raise forms.ValidationError(
                    "a crontab line has five fields: minute hour day-of-month month day-of-week")
            names = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")
            data["schedule"] = dict(zip(names, fields, strict=True), type="crontab", timezone=zone or None)
        try:
            schedules.to_json(data["schedule"])
        except DurableError as exc:
            raise forms.ValidationError(str(exc)) from None
        return data


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 200 else text[:197] + "..."
