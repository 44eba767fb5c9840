"""The figures: each runs its comparison side by side and returns numbers."""

import json
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from email.utils import make_msgid

from bench import load
from bench.processes import (
    ROOT,
    Stack,
    process_cpu_seconds,
    procfile_command,
    procfile_option,
    wait_until,
    worker_processes,
)
from bench.stats import Runs, percentile

API = "/api/register"
INLINE = "/bench/inline-register"
NAIVE_WORKER = ["worker", "--pool", "prefork", "--concurrency", "2"]
NAIVE_WORKER += ["--loglevel", "INFO", "--queues", "naive"]
# A new database connection per task, as Celery does by default, and
# django-celery-results' own backend.
NAIVE_WORKER_ENV = {
    "CELERY_DB_REUSE_MAX": "0",
    "DB_CONN_MAX_AGE": "0",
    "CELERY_RESULT_BACKEND": "django-db",
}


@dataclass
class Counts:
    runs: int
    fig1: int  # registrations per run, this project
    fig1_inline: int  # registrations per run, inline baseline (slow)
    fig2: int
    fig2_runs: int
    fig3: int
    fig3_naive: int
    fig3_runs: int
    fig5: int
    fig6_seconds: float
    fig4_tasks: int


# 500 registrations per run puts figure 1's p99 on its 5th slowest request;
# figure 3 runs five times: a 2-core machine shared by every process is noisy.
FULL = Counts(3, 500, 150, 150, 5, 1000, 150, 5, 10_000, 10.0, 300)
QUICK = Counts(2, 60, 30, 40, 2, 200, 40, 2, 1_000, 3.0, 100)


class RelayLog:
    """The relay's 250s (recipient -> unix time) and new connections."""

    def __init__(self, path) -> None:
        self.path = path
        self.offset = 0
        self.accepted: dict[str, float] = {}
        self.connections = 0

    def poll(self) -> None:
        if not self.path.exists():
            return
        with self.path.open() as log:
            log.seek(self.offset)
            chunk = log.read()
        complete = chunk.rpartition("\n")[0]
        if not complete:
            return
        self.offset += len(complete) + 1
        for line in complete.splitlines():
            kind, _, rest = line.partition(" ")
            if kind == "S":
                stamp, _, rcpt = rest.partition(" ")
                self.accepted[rcpt] = float(stamp)
            elif kind == "C":
                self.connections += 1

    def wait_for(self, emails, *, timeout: float) -> dict[str, float]:
        def done() -> bool:
            self.poll()
            return all(email in self.accepted for email in emails)

        wait_until(done, timeout=timeout, what=f"{len(emails)} mails at the relay")
        return {email: self.accepted[email] for email in emails}


@dataclass
class Figures:
    stack: Stack
    quick: bool
    results: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.counts = QUICK if self.quick else FULL
        self.relay = RelayLog(self.stack.relay_log)
        self.serial = 0
        self.worker_names = [f"worker{n}" for n in range(1, worker_processes() + 1)]
        self.worker_pids: list[int] = []

    def setup(self) -> None:
        import django

        self.stack.migrate()
        django.setup()
        self.stack.start_redis()
        self.stack.start_relay(delay_ms=0)
        self.stack.start_web("web")
        self.stack.start_web("web-nomail", BENCH_MAIL_PATH="off")

    def run_all(self, wanted: list[str] | None) -> dict:
        steps = [
            ("hashing", self.password_hashing),
            ("2", self.fig2_mail_path_cost),
            ("1", self.fig1_registration_under_load),
            ("6", self.fig6_commit_to_relay),
            ("3", self.fig3_mail_throughput),
            ("5", self.fig5_resend_failed),
            ("4", self.fig4_result_storage),
        ]
        for name, step in steps:
            if wanted is None or name in wanted:
                print(f"== {step.__name__}", flush=True)
                clock = time.monotonic()
                step()
                print(f"   done in {time.monotonic() - clock:.0f} s", flush=True)
        self.results["project_worker"] = " ".join(procfile_command("worker"))
        self.results["project_workers"] = worker_processes()
        self.results["naive_worker"] = "celery -A celery_app " + " ".join(NAIVE_WORKER)
        return self.results

    # --- helpers --------------------------------------------------------------

    def emails(self, figure: str, count: int, delay_ms: int | None = None):
        self.serial += 1
        tag = f"+d{delay_ms}" if delay_ms is not None else ""
        return [f"f{figure}r{self.serial}n{i}{tag}@bench.example" for i in range(count)]

    def ensure_project_worker(self) -> None:
        """This project's workers as `make run` starts them (WORKER_PROCESSES)."""
        if not self.worker_pids:
            self.worker_pids = [
                self.stack.start_worker(name, procfile_command("worker")[3:])
                for name in self.worker_names
            ]

    def stop_project_worker(self) -> None:
        for name in self.worker_names:
            self.stack.stop(name)
        self.worker_pids = []

    def make_deliveries(self, emails: list[str], *, status: str):
        """Create users and outbox rows in one transaction, as a registration
        would; return the rows."""
        from django.contrib.auth.hashers import make_password
        from django.db import transaction
        from django.utils import timezone

        from mailer.models import Delivery
        from users.models import User

        hashed = make_password(load.PASSWORD)
        lease = timezone.now() + timedelta(minutes=5)
        with transaction.atomic():
            users = User.objects.bulk_create(
                [User(email=email, password=hashed) for email in emails],
                batch_size=1000,
            )
            rows = Delivery.objects.bulk_create(
                [
                    Delivery(
                        user=user,
                        kind=Delivery.Kind.WELCOME,
                        status=status,
                        task_id=str(uuid.uuid4()),
                        message_id=make_msgid(domain="bench.example"),
                        lease_expires_at=lease,
                        attempts=1 if status == Delivery.Status.FAILED else 0,
                        smtp_code=550 if status == Delivery.Status.FAILED else None,
                        last_error="550 mailbox unavailable"
                        if status == Delivery.Status.FAILED
                        else "",
                    )
                    for user in users
                ],
                batch_size=1000,
            )
        return rows

    # --- the figures ----------------------------------------------------------

    def password_hashing(self) -> None:
        """What one password hash costs with each hasher, in this process."""
        from django.contrib.auth.hashers import (
            Argon2PasswordHasher,
            PBKDF2PasswordHasher,
        )

        from users.hashers import Argon2idPasswordHasher

        hashers = [
            ("Argon2id, OWASP minimum (this project)", Argon2idPasswordHasher(), 20),
            ("Argon2, Django's defaults", Argon2PasswordHasher(), 8),
            ("PBKDF2, Django's default hasher", PBKDF2PasswordHasher(), 5),
        ]
        rows = []
        for label, hasher, repeat in hashers:
            hasher.encode(load.PASSWORD, hasher.salt())  # warm-up
            samples = []
            for _ in range(repeat):
                clock = time.perf_counter()
                hasher.encode(load.PASSWORD, hasher.salt())
                samples.append((time.perf_counter() - clock) * 1000)
            rows.append((label, Runs(samples)))
        self.results["hashing"] = rows

    def fig2_mail_path_cost(self) -> None:
        """One client, back to back: the receiver connected vs disconnected."""
        c = self.counts
        ports = {
            "connected": self.stack.web_ports["web"],
            "disconnected": self.stack.web_ports["web-nomail"],
        }
        for port in ports.values():  # warm-up
            load.closed_loop(port=port, path=API, emails=self.emails(2, 20), clients=1)
        medians = {name: [] for name in ports}
        for _ in range(c.fig2_runs):
            for name, port in ports.items():
                answers, _ = load.closed_loop(
                    port=port, path=API, emails=self.emails(2, c.fig2), clients=1
                )
                latencies = [a.latency * 1000 for a in answers]
                medians[name].append(statistics.median(latencies))
        diffs = [
            on - off
            for on, off in zip(
                medians["connected"], medians["disconnected"], strict=True
            )
        ]
        self.results["fig2"] = {
            "connected": Runs(medians["connected"]),
            "disconnected": Runs(medians["disconnected"]),
            "added": Runs(diffs),
            "requests": c.fig2,
            "runs": c.fig2_runs,
        }

    def fig1_registration_under_load(self) -> None:
        """20 clients: this project at three relay delays, inline at 200 ms."""
        c = self.counts
        self.ensure_project_worker()
        web, inline = self.stack.web_ports["web"], self.stack.web_ports["web-nomail"]
        configs = [
            ("project, relay 0 ms", web, API, 0, c.fig1),
            ("project, relay 200 ms", web, API, 200, c.fig1),
            ("inline baseline, relay 200 ms", inline, INLINE, 200, c.fig1_inline),
            ("project, relay 2 s", web, API, 2000, c.fig1),
        ]
        for _, port, path, delay, _ in configs:  # warm-up
            load.closed_loop(
                port=port, path=path, emails=self.emails(1, 20, delay), clients=20
            )
        rows = {name: {"rps": [], "p50": [], "p99": []} for name, *_ in configs}
        mailed = []
        for _ in range(c.runs):
            for name, port, path, delay, count in configs:
                emails = self.emails(1, count, delay)
                answers, wall = load.closed_loop(
                    port=port, path=path, emails=emails, clients=20
                )
                latencies = [a.latency * 1000 for a in answers]
                rows[name]["rps"].append(len(answers) / wall)
                rows[name]["p50"].append(percentile(latencies, 50))
                rows[name]["p99"].append(percentile(latencies, 99))
                mailed += emails
        self.results["fig1"] = {
            name: {key: Runs(values) for key, values in row.items()}
            for name, row in rows.items()
        }
        self.results["fig1_counts"] = (c.fig1, c.fig1_inline, c.runs)
        # Every registration's mail reaches the relay before the next figure.
        self.relay.wait_for(mailed, timeout=240)

    def fig6_commit_to_relay(self) -> None:
        """A steady 50 registrations/s; from the user's row to the relay's 250."""
        c = self.counts
        self.ensure_project_worker()
        from users.models import User

        web = self.stack.web_ports["web"]
        count = int(50 * c.fig6_seconds)
        load.open_loop(port=web, path=API, emails=self.emails(6, 50), rate=50)
        p50s, p99s, reg_p50, reg_p99, behind = [], [], [], [], []
        for _ in range(c.runs):
            emails = self.emails(6, count)
            answers, late = load.open_loop(port=web, path=API, emails=emails, rate=50)
            accepted = self.relay.wait_for(emails, timeout=120)
            joined = dict(
                User.objects.filter(email__in=emails).values_list(
                    "email", "date_joined"
                )
            )
            delays = [(accepted[e] - joined[e].timestamp()) * 1000 for e in emails]
            p50s.append(percentile(delays, 50))
            p99s.append(percentile(delays, 99))
            latencies = [a.latency * 1000 for a in answers]
            reg_p50.append(percentile(latencies, 50))
            reg_p99.append(percentile(latencies, 99))
            behind.append(late * 1000)
        self.results["fig6"] = {
            "p50": Runs(p50s),
            "p99": Runs(p99s),
            "registration_p50": Runs(reg_p50),
            "registration_p99": Runs(reg_p99),
            "sender_behind_ms": max(behind),
            "count": count,
            "runs": c.runs,
        }

    def fig3_mail_throughput(self) -> None:
        """Rows committed, tasks published, until the relay's last 250 (50 ms)."""
        from bench.tasks import send_welcome_email_naive
        from mailer.dispatch import dispatch_delivery

        c = self.counts
        self.ensure_project_worker()
        naive_pids = [
            self.stack.start_worker("worker-naive", NAIVE_WORKER, **NAIVE_WORKER_ENV)
        ]

        def naive_dispatch(row) -> None:
            send_welcome_email_naive.apply_async(
                args=(row.pk,), task_id=row.task_id, queue="naive"
            )

        def project_dispatch(row) -> None:
            dispatch_delivery(row.pk, row.task_id)

        configs = [
            ("naive", naive_pids, naive_dispatch, c.fig3_naive),
            ("project", self.worker_pids, project_dispatch, c.fig3),
        ]
        # Warm-up until every pool thread has run and opened its database and
        # SMTP connections: a burst of several mails per thread.
        threads = len(self.worker_pids) * int(
            procfile_option("worker", "--concurrency")
        )
        warm_up = {"naive": 40, "project": max(40, 4 * threads)}
        for name, _, dispatch, _ in configs:
            emails = self.emails(3, warm_up[name], 50)
            for row in self.make_deliveries(emails, status="pending"):
                dispatch(row)
            self.relay.wait_for(emails, timeout=120)
        rows = {
            name: {"rate": [], "cpu": [], "connections": []} for name, *_ in configs
        }
        for _ in range(c.fig3_runs):
            for name, pids, dispatch, count in configs:
                emails = self.emails(3, count, 50)
                deliveries = self.make_deliveries(emails, status="pending")
                self.relay.poll()
                connections = self.relay.connections
                cpu = sum(map(process_cpu_seconds, pids))
                committed = time.time()
                for row in deliveries:
                    dispatch(row)
                accepted = self.relay.wait_for(emails, timeout=max(120, count))
                last = max(accepted.values())
                rows[name]["rate"].append(count / (last - committed))
                rows[name]["cpu"].append(
                    (sum(map(process_cpu_seconds, pids)) - cpu) * 1000 / count
                )
                rows[name]["connections"].append(self.relay.connections - connections)
        self.stack.stop("worker-naive")
        self.results["fig3"] = {
            name: {key: Runs(values) for key, values in row.items()}
            for name, row in rows.items()
        }
        self.results["fig3_counts"] = (c.fig3_naive, c.fig3, c.fig3_runs)
        self.results["fig3_floor"] = self.task_floor(c.fig3, c.fig3_runs)

    def task_floor(self, count: int, runs: int) -> dict[str, Runs]:
        """This project's workers running a task that does nothing.

        Same workers, options and settings as the send (acks_late, task events,
        STARTED and SUCCESS results): what Celery, Redis and the result backend
        cost per task before any mail work.
        """
        from django.db.models import Max
        from django_celery_results.models import TaskResult

        from bench.tasks import do_nothing

        rate, cpu = [], []
        for run in range(runs + 1):  # the first is a warm-up
            ids = [str(uuid.uuid4()) for _ in range(count)]
            before = sum(map(process_cpu_seconds, self.worker_pids))
            started = time.time()
            for task_id in ids:
                do_nothing.apply_async(task_id=task_id)
            done = TaskResult.objects.filter(task_id__in=ids, status="SUCCESS")
            wait_until(
                lambda done=done: done.count() == count,
                timeout=120,
                what=f"{count} no-op tasks",
            )
            if run:
                last = done.aggregate(last=Max("date_done"))["last"].timestamp()
                rate.append(count / (last - started))
                spent = sum(map(process_cpu_seconds, self.worker_pids)) - before
                cpu.append(spent * 1000 / count)
        return {"rate": Runs(rate), "cpu": Runs(cpu)}

    def fig5_resend_failed(self) -> None:
        """`manage.py resend_failed` over 10,000 failed rows, no worker running."""
        from django.core.management import get_commands

        from mailer.models import Delivery

        c = self.counts
        self.stop_project_worker()  # measure dispatch, not sending
        if "resend_failed" not in get_commands():
            print("   resend_failed: not available (no such command yet)", flush=True)
            self.results["fig5"] = None
            return
        rows = self.make_deliveries(self.emails(5, c.fig5), status="failed")
        ids = [row.pk for row in rows]
        client = self.stack.redis()
        argv = [sys.executable, "manage.py", "resend_failed"]
        argv += ["--limit", str(c.fig5)]
        seconds, dispatched = [], []
        for _ in range(c.runs):
            Delivery.objects.filter(pk__in=ids).update(status=Delivery.Status.FAILED)
            client.delete(*client.keys("celery*") or ["celery"])
            clock = time.perf_counter()
            done = subprocess.run(
                argv,
                cwd=ROOT,
                env=self.stack.env(),
                capture_output=True,
                text=True,
                timeout=300,
                stdin=subprocess.DEVNULL,
            )
            seconds.append(time.perf_counter() - clock)
            if done.returncode:
                raise RuntimeError(f"resend_failed failed:\n{done.stderr[-2000:]}")
            dispatched.append(
                sum(
                    client.llen(key)
                    for key in client.keys("celery*")
                    if client.type(key) == b"list"
                )
            )
        client.delete(*client.keys("celery*") or ["celery"])
        self.results["fig5"] = {
            "seconds": Runs(seconds),
            "rate": Runs([c.fig5 / s for s in seconds]),
            "dispatched": dispatched,
            "rows": c.fig5,
            "runs": c.runs,
        }

    def fig4_result_storage(self) -> None:
        """django-celery-results per task, on SQLite and on PostgreSQL."""
        c = self.counts
        targets = [("SQLite", f"sqlite:///{self.stack.directory / 'results.sqlite3'}")]
        if self.stack.database.vendor == "postgresql":
            targets.append(("PostgreSQL", self.stack.database.url))
        out = {}
        for label, url in targets:
            argv = [sys.executable, "-m", "bench.result_cost", "--migrate"]
            argv += ["--tasks", str(c.fig4_tasks), "--runs", str(max(3, c.runs))]
            done = subprocess.run(
                argv,
                cwd=ROOT,
                env=self.stack.env(DATABASE_URL=url),
                capture_output=True,
                text=True,
                timeout=300,
                check=True,
            )
            data = json.loads(done.stdout.strip().splitlines()[-1])
            out[label] = {k: Runs(v) for k, v in data["ms_per_task"].items()}
        self.results["fig4"] = out
        self.results["fig4_tasks"] = c.fig4_tasks
