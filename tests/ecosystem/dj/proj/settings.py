"""Settings of the test project. ``build(url, schema)`` makes them; as a module it reads
CELERY_DURABLE_URL (the project's database, also broker and result backend) and
CELERY_DURABLE_SCHEMA, as the worker subprocesses get them."""

from __future__ import annotations

import os
from importlib.util import find_spec

from psycopg.conninfo import conninfo_to_dict

from celery_durable.db import dsn


def database(url: str) -> dict:
    params = conninfo_to_dict(dsn.from_url(url))
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": params.get("dbname", ""),
        "USER": params.get("user", ""),
        "PASSWORD": params.get("password", ""),
        "HOST": params.get("host", ""),
        "PORT": params.get("port", ""),
    }


def build(url: str, schema: str) -> dict:
    return dict(
        SECRET_KEY="celery-durable-tests",
        DEBUG=False,
        ALLOWED_HOSTS=["*"],
        USE_TZ=True,
        ROOT_URLCONF="tests.ecosystem.dj.proj.urls",
        STATIC_URL="static/",
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        INSTALLED_APPS=[
            "django.contrib.admin",
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sessions",
            "django.contrib.messages",
            "celery_durable.contrib.django",
            "tests.ecosystem.dj.proj.shop",
            *(["django_celery_beat"] if find_spec("django_celery_beat") else []),  # (importing its entries)
        ],
        MIDDLEWARE=[
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.middleware.common.CommonMiddleware",
            "django.middleware.csrf.CsrfViewMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
            "django.contrib.messages.middleware.MessageMiddleware",
        ],
        TEMPLATES=[{
            "BACKEND": "django.template.backends.django.DjangoTemplates",
            "APP_DIRS": True,
            "OPTIONS": {"context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]},
        }],
        DATABASES={"default": database(url)},
        CELERY_BROKER_URL=url,
        CELERY_RESULT_BACKEND=url,
        CELERY_BROKER_TRANSPORT_OPTIONS={"schema": schema, "polling_interval": 1.0},
        CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS={"schema": schema},
        CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP=True,
        CELERY_WORKER_HIJACK_ROOT_LOGGER=False,
        CELERY_TASK_ACKS_LATE=False,
    )


if os.environ.get("CELERY_DURABLE_URL"):
    globals().update(build(os.environ["CELERY_DURABLE_URL"], os.environ.get("CELERY_DURABLE_SCHEMA", "celery_durable")))
