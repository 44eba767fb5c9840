"""Flower's configuration, read by `celery -A celery_app flower` from this directory.

Flower shows task arguments and can revoke tasks: it never runs without basic
auth unless DJANGO_DEBUG is on, and then with a printed development login.
"""

import os
import sys

import environ

_env = environ.Env()

address = _env.str("FLOWER_ADDRESS", default="127.0.0.1")
port = _env.int("FLOWER_PORT", default=5555)
# Forget nothing between restarts that Redis still holds; keep the UI snappy.
max_tasks = 10000

if not os.environ.get("FLOWER_BASIC_AUTH"):
    if not _env.bool("DJANGO_DEBUG", default=False):
        sys.exit(
            "Flower refuses to start without auth: set FLOWER_BASIC_AUTH=user:password."
        )
    basic_auth = ["flower:flower-dev"]
    print("Flower development login (DJANGO_DEBUG is on): flower / flower-dev")
