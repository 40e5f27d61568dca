"""``python -m celery_durable.cli``: the same as ``celery-durable``."""

import sys

from . import main

main(sys.argv[1:])
