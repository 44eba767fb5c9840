"""Open N pooled connections and hold them until killed (tests/mailer/test_pool.py).

`python -m tests.mailer.pool_hold N`, with the suite's REDIS_URL and
EMAIL_PORT in the environment; prints "held" once the connections are open.
"""

import os
import sys
import time

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
django.setup()

from mailer.pool import pool  # noqa: E402

held = [pool.checkout(wait=10) for _ in range(int(sys.argv[1]))]
print("held", flush=True)
while True:
    time.sleep(60)
