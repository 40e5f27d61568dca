from django.db import models


class Order(models.Model):
    number = models.IntegerField()


class Execution(models.Model):
    """One row per task run, written by the worker: what ran how often."""

    tag = models.TextField()
    pid = models.IntegerField()
