"""Example settings: one PostgreSQL database for Django, the broker and the result backend.

DATABASE_URL (default postgresql://postgres@localhost/shop) names it.
"""

import os

from psycopg.conninfo import conninfo_to_dict

URL = os.environ.get("DATABASE_URL", "postgresql://postgres@localhost/shop")
_db = conninfo_to_dict(URL)

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
DEBUG = True
ALLOWED_HOSTS = ["localhost", "127.0.0.1"]
USE_TZ = True
ROOT_URLCONF = "shop_site.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "celery_durable.contrib.django",  # atomic() publishes, admin pages
    "orders",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]},
}]
STATIC_URL = "static/"

DATABASES = {"default": {
    "ENGINE": "django.db.backends.postgresql",  # psycopg 3
    "NAME": _db.get("dbname", ""),
    "USER": _db.get("user", ""),
    "PASSWORD": _db.get("password", ""),
    "HOST": _db.get("host", ""),
    "PORT": _db.get("port", ""),
}}

# Celery, through its CELERY_ namespace. Broker and backend on Django's own database: a task
# sent inside transaction.atomic() commits or rolls back with the order that asked for it.
CELERY_BROKER_URL = URL
CELERY_RESULT_BACKEND = URL
CELERY_BROKER_TRANSPORT_OPTIONS = {"schema": "celery_durable"}
CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS = {"schema": "celery_durable"}
CELERY_DURABLE_JOIN_ATOMIC = True  # the default; False publishes on its own connection
