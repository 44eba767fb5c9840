"""Pick the suite's own Redis and SMTP ports before Django reads its settings.

Loaded with `-p tests.services` (see pyproject.toml) so it runs before
pytest-django imports the settings; the servers themselves start lazily in
fixtures (tests/conftest.py). Nothing here touches a shared Redis.
"""

import os

from tests.support import free_port

REDIS_PORT = free_port()
SMTP_PORT = free_port()

os.environ["REDIS_URL"] = f"redis://127.0.0.1:{REDIS_PORT}/0"
os.environ["EMAIL_HOST"] = "127.0.0.1"
os.environ["EMAIL_PORT"] = str(SMTP_PORT)
os.environ["EMAIL_TIMEOUT"] = "5"
os.environ["SITE_URL"] = "http://testserver"
os.environ.setdefault("DJANGO_SECRET_KEY", "test-only-secret-key-" + "x" * 40)
os.environ.setdefault("DJANGO_DEBUG", "0")
