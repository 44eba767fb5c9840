"""Figure: where each ms of one mail's sending goes, this project against post_office.

py-spy samples one sending process while it drains a queued backlog to the
0 ms relay (`record --nonblocking`: threads on a CPU or ready for one). Each
sample goes to the stage of the innermost frame that a rule names (PROJECT,
POST_OFFICE), "other" when none does. A stage's ms per mail is its share of
the samples times the process's measured CPU per mail, so the stages add up
to the whole.
"""

import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from bench.harness import render, table_rows
from bench.peers.systems import by_label
from bench.processes import process_cpu_seconds, procfile_command
from bench.stats import Runs

# The worker starts on a queue nothing is sent to, then is told to consume
# the backlog: its start-up is outside the samples and the CPU.
HOLD_QUEUE = "bench-hold"
RATE = 250  # samples per second
OTHER = "other"

# (stage, path fragment of the frame's file, function names or None for any).
# The innermost frame that matches decides; the first rule wins for a frame.
PROJECT = [
    ("logs", "logging/", None),
    ("metrics", "prometheus_client/", None),
    ("metrics", "mailer/metrics.py", None),
    ("events", "celery/events/", None),
    ("result", "celery/backends/", None),
    ("result", "mailer/results.py", None),
    ("result", "django_celery_results/", None),
    ("ack", "kombu/message.py", {"ack", "ack_log_error"}),
    ("ack", "kombu/transport/redis.py", {"basic_ack", "ack"}),
    ("ack", "celery/worker/request.py", {"acknowledge"}),
    ("token", "users/tokens.py", None),
    ("token", "django/core/signing.py", None),
    ("MIME", "mailer/mime.py", None),
    ("MIME", "django/core/mail/message.py", None),
    ("MIME", "email/", None),
    ("SMTP", "smtplib.py", None),
    ("SMTP", "mailer/smtp.py", None),
    ("SMTP", "mailer/pool.py", None),
    ("SMTP", "django/core/mail/backends/smtp.py", None),
    ("render", "mailer/messages.py", None),
    ("claim", "mailer/claims.py", {"claim_delivery", "_claim_returning",
                                   "_claim_update"}),
    ("mark", "mailer/claims.py", {"mark_sent"}),
    ("mark", "mailer/attempts.py", {"_record_sent"}),
    ("budget", "mailer/budget.py", None),
    ("budget", "mailer/relay.py", None),
    ("suppression", "mailer/suppression.py", None),
    (OTHER, "mailer/", None),
    (OTHER, "celery/app/trace.py", None),
    ("consume", "kombu/", None),
    ("consume", "celery/worker/", None),
    ("consume", "celery/concurrency/", None),
    ("consume", "concurrent/futures/", None),
]  # fmt: skip

POST_OFFICE = [
    ("logs", "logging/", None),
    ("claim", "post_office/mail.py", {"get_queued", "attach_templates"}),
    ("claim", "post_office/lockfile.py", None),
    ("mark", "django/db/models/query.py", {"update", "bulk_update"}),
    ("result", "django/db/models/query.py", {"bulk_create"}),  # its Log rows
    ("MIME", "django/core/mail/message.py", None),
    ("MIME", "email/", None),
    ("MIME", "post_office/models.py", {"prepare_email_message"}),
    ("SMTP", "smtplib.py", None),
    ("SMTP", "django/core/mail/backends/smtp.py", None),
    ("SMTP", "post_office/models.py", {"dispatch"}),
    ("consume", "multiprocessing/", None),
    ("claim", "post_office/mail.py", {"send_queued"}),
]
# A post_office sample with none of these frames is its command's start-up or
# exit, which the figure leaves out (as it leaves out the worker's start).
POST_OFFICE_LOOP = ("post_office/", "multiprocessing/")
# A module imported on first use is start-up too, in either system.
IMPORTING = "<frozen importlib._bootstrap"

STAGES = [
    ("consume", "Celery takes the message: Redis, decoding, the request, the "
     "pool", "the thread pool hands each mail to a thread"),
    ("claim", "the conditional UPDATE (with the user; on PostgreSQL, whether "
     "the address is suppressed)", "the batch's SELECT"),
    ("render", "the templates, the activation link, the row's language read "
     "back (PostgreSQL)", "in the request"),
    ("token", "signing the activation token", "in the request"),
    ("MIME", "the message and its bytes", "the same"),
    ("SMTP", "smtplib over a pooled connection, the fence",
     "smtplib over its thread's connection"),
    ("mark", "the row marked sent", "one UPDATE per batch"),
    ("result", "the SUCCESS result upsert", "its Log rows, one INSERT per batch"),
    ("events", "task-received, -started, -succeeded", "none"),
    ("ack", "the late ack (Redis)", "none"),
    ("metrics", "prometheus counters and histograms", "none"),
    ("logs", "log lines, ours and Celery's", "its log lines"),
    ("budget", "the relay's state and the send budget (Redis)", "none"),
    ("suppression", "the suppression-list lookup (SQLite; a listed address)", "none"),
    (OTHER, "the task's own code, Celery's tracer, the Django fixup, idle "
     "threads' work", "the command's loop"),
]  # fmt: skip

TEXT = """
## Where each ms goes

CPU per mail of one sending process, by stage of a mail's sending. The
process drains a queued backlog of $count welcome mails to the 0 ms relay
under `py-spy record --nonblocking --rate $rate`: this project's worker as the
Procfile runs it (`--pool threads --concurrency 4 --prefetch-multiplier
16`), started on an empty queue and then told to consume the backlog (its
start-up is left out), and
post_office's `send_queued_mail` (docs: 1 process, 5 threads; its CPU on an
empty queue, the lower of two runs, and the samples of its start-up are left
out). Each sample
goes to the stage of its innermost frame that a rule in bench/fig_stages.py
names (Celery's event loop and pool only when no other rule does), "other"
when none does. A stage's ms is its share of the samples of every timed run
times the median CPU per mail (user + system, measured), so the rows add up
to the whole; spread: each run's share times the same median. $runs runs
each, interleaved, after a warm-up run each.

py-spy samples the threads that are on a CPU or ready for one: this project's
samples covered $ours thread-seconds per second of CPU, post_office's
$theirs. Above 1, threads waited for one of the two cores, mostly right after
waking another process (a socket send to the relay, Redis or the database),
so SMTP and the round trips read high; below 1, py-spy fell behind its rate
on a busy machine. With `--gil` (the issue's first
profile) it is the other way round: time without the GIL (socket calls)
reads low and long stretches of Python (MIME) high.

| stage | this project | ms per mail (share) | post_office | ms per mail (share) |
| --- | --- | --- | --- | --- |
$rows
"""


def spy_binary() -> str | None:
    """py-spy from the project's virtualenv (requirements-dev.txt), else PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def run(bench) -> dict:
    spy = spy_binary()
    if spy is None:
        return {"missing": True}
    post_office = by_label(bench.stack.database.vendor)["post_office, docs"]
    bench.peers.prepare(post_office)
    idle = [bench.peers.run_command(post_office)[0] for _ in range(2)]
    count, runs = bench.size(250, 80), bench.size(3, 2)
    worker = Worker(bench, spy)
    found = {"project": [], "post_office": []}
    try:
        for index in range(runs + 1):  # the first is a warm-up
            size = count if index else max(20, count // 4)
            project = worker.drain(size)
            theirs = drain_post_office(bench, spy, post_office, size, min(idle))
            if index:
                found["project"].append(project)
                found["post_office"].append(theirs)
    finally:
        worker.stop()
    return {"count": count, "runs": runs, **found}


class Worker:
    """One Procfile worker, told to consume each backlog once it is queued."""

    def __init__(self, bench, spy: str) -> None:
        self.bench, self.spy, self.name = bench, spy, "stages"
        self.hostname = f"{self.name}@{socket.gethostname()}"
        bench.stop_project_worker()  # nothing else consumes the backlog
        argv = [sys.executable, "-m", *procfile_command("worker")]
        argv += ["--hostname", self.hostname, "--queues", HOLD_QUEUE]
        before = bench.peers.readies(self.name)
        self.pid = bench.stack.spawn(self.name, argv, bench.stack.env()).pid
        bench.peers.wait_ready(self.name, before)

    def drain(self, count: int) -> dict:
        from celery_app import app

        project = by_label(self.bench.stack.database.vendor)["this project"]
        prefix = self.bench.prefix("st")
        queued = self.bench.peers.enqueue(project, count=count, prefix=prefix)
        emails = list(queued["began"])
        used = process_cpu_seconds(self.pid)
        spy = Spy(self.spy, self.pid, self.bench.stack.directory / f"{prefix}.raw")
        reply = app.control.add_consumer(
            "celery", destination=[self.hostname], reply=True, timeout=10
        )
        if not reply:
            raise RuntimeError(f"{self.hostname} did not answer add_consumer")
        self.bench.relay.wait_for(emails, timeout=max(120, count))
        settle_results(emails, timeout=30)
        used = process_cpu_seconds(self.pid) - used
        samples = spy.stop()
        app.control.cancel_consumer("celery", destination=[self.hostname], reply=True)
        return measured(samples, PROJECT, used, count)

    def stop(self) -> None:
        self.bench.stack.stop(self.name)


def settle_results(emails: list[str], *, timeout: float) -> None:
    """Wait for every mail's SUCCESS result; the ack and events follow at once."""
    from django_celery_results.models import TaskResult

    from mailer.models import Delivery
    from tests.support import wait_until

    ids = Delivery.objects.filter(user__email__in=emails).values_list("task_id")
    done = TaskResult.objects.filter(task_id__in=ids, status="SUCCESS")
    wait_until(lambda: done.count() >= len(emails), timeout=timeout, what="results")
    time.sleep(0.2)


def drain_post_office(bench, spy: str, system, count: int, idle: float) -> dict:
    """Queue `count` mails, run `send_queued_mail` under py-spy to its end."""
    prefix = bench.prefix("st")
    bench.peers.enqueue(system, count=count, prefix=prefix)
    spies = []
    path = bench.stack.directory / f"{prefix}.raw"
    cpu, _ = bench.peers.run_command(
        system, started=lambda pid: spies.append(Spy(spy, pid, path))
    )
    samples = [s for s in spies[0].wait() if in_loop(s[0])]
    return measured(samples, POST_OFFICE, cpu - idle, count)


def in_loop(stack: list[str]) -> bool:
    return any(part in frame for frame in stack for part in POST_OFFICE_LOOP)


def importing(stack: list[str]) -> bool:
    return any(IMPORTING in frame for frame in stack)


class Spy:
    """`py-spy record` on one pid, raw (collapsed) stacks into `path`."""

    def __init__(self, binary: str, pid: int, path: Path) -> None:
        self.path = path
        argv = [binary, "record", "--pid", str(pid), "--rate", str(RATE)]
        argv += ["--nonblocking", "--format", "raw", "--output", str(path)]
        self.log = path.with_suffix(".log")
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=log)
        time.sleep(0.3)  # attached before the work starts
        if self.process.poll() is not None:
            raise RuntimeError(f"py-spy exited: {self.log.read_text()[-2000:]}")

    def stop(self) -> list[tuple[list[str], int]]:
        self.process.send_signal(signal.SIGINT)
        return self.wait()

    def wait(self) -> list[tuple[list[str], int]]:
        if self.process.wait(timeout=60) or not self.path.exists():
            raise RuntimeError(f"py-spy failed: {self.log.read_text()[-2000:]}")
        return parse(self.path.read_text())


def parse(raw: str) -> list[tuple[list[str], int]]:
    """Collapsed stacks (`frame;frame;... count`), root first."""
    samples = []
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack:
            samples.append((stack.split(";"), int(count)))
    return samples


def stage_of(stack: list[str], rules) -> str:
    """The stage of the innermost frame a rule names, OTHER if none does.

    "consume" rules (the event loop, the pool) name frames that also sit
    under other stages (an event's publish goes through kombu), so they
    count only when no other rule names a frame of the stack.
    """
    frames = [_frame(frame) for frame in reversed(stack)]
    for tier in (False, True):
        for function, path in frames:
            for stage, fragment, functions in rules:
                if (stage == "consume") != tier or fragment not in path:
                    continue
                if functions is None or function in functions:
                    return stage
    return OTHER


def _frame(frame: str) -> tuple[str, str]:
    """`Class.function (path/file.py:line)` -> (function, path/file.py)."""
    function, _, where = frame.partition(" (")
    return function.rpartition(".")[2], where.rpartition(":")[0]


def measured(samples, rules, cpu_seconds: float, count: int) -> dict:
    """One run: samples per stage and the CPU per mail they share."""
    stages = Counter()
    for stack, hits in samples:
        if not importing(stack):
            stages[stage_of(stack, rules)] += hits
    if not stages:
        raise RuntimeError("py-spy recorded no samples of the sending process")
    return {
        "samples": dict(stages),
        "cpu_ms": cpu_seconds * 1000 / count,
        # Thread-seconds sampled per CPU second: above 1, threads were ready
        # to run but waiting for one of the two cores.
        "sampled": sum(stages.values()) / RATE / cpu_seconds,
    }


def shares(runs: list[dict]) -> dict[str, dict]:
    """Per stage: ms per mail from every run's samples and the median whole
    CPU (the rows add up to it); its spread, each run's share of that CPU."""
    pooled = Counter()
    for one in runs:
        pooled.update(one["samples"])
    total = sum(pooled.values())
    whole = Runs([one["cpu_ms"] for one in runs]).median
    found = {}
    for stage, *_ in STAGES:
        per_run = [
            whole * one["samples"].get(stage, 0) / sum(one["samples"].values())
            for one in runs
        ]
        found[stage] = {
            "ms": whole * pooled[stage] / total,
            "share": pooled[stage] / total,
            "runs": Runs(per_run),
        }
    return {
        "stages": found,
        "whole": Runs([one["cpu_ms"] for one in runs]),
        "sampled": Runs([one["sampled"] for one in runs]),
    }


def section(data) -> tuple[str, list]:
    if data.get("missing"):
        return "## Where each ms goes\n\nnot measured: py-spy missing.\n", []
    ours, theirs = shares(data["project"]), shares(data["post_office"])
    rows = []
    for stage, what_ours, what_theirs in STAGES:
        cells = []
        for found, what in ((ours, what_ours), (theirs, what_theirs)):
            one = found["stages"][stage]
            if not one["share"] and what in ("none", "in the request"):
                cells += [what, "-"]
            else:
                spread = one["runs"].show("{:.2f}").split(" ", 1)[1]
                cells += [what, f"{one['ms']:.2f} {spread} ({one['share']:.0%})"]
        rows.append([stage, *cells])
    rows.append(["whole", "CPU per mail", ours["whole"].show("{:.2f}"),
                 "CPU per mail", theirs["whole"].show("{:.2f}")])  # fmt: skip
    text = render(TEXT, count=data["count"], rate=RATE, runs=data["runs"],
                  rows=table_rows(rows), ours=ours["sampled"].show("{:.2f}"),
                  theirs=theirs["sampled"].show("{:.2f}"))  # fmt: skip
    return text, []
