"""Settings for benchmark processes: the project's, plus bench-only views/tasks."""

from project.settings import *  # noqa: F403
from project.settings import INSTALLED_APPS, env

ROOT_URLCONF = "bench.urls"
INSTALLED_APPS = [*INSTALLED_APPS, "bench"]

# "off" disconnects the user_registered receiver in this process: no outbox
# row, no publish (figure 2's comparison, and the inline baseline's web).
BENCH_MAIL_PATH = env.str("BENCH_MAIL_PATH", default="on")
