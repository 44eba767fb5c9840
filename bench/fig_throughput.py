"""Figure: mails/s, CPU per mail and SMTP connections, every system, two relays.

The floor (the project's workers on a task that does nothing) and the ceiling
(one smtplib connection sending a pre-rendered message) come from the same run.
"""

import contextlib
import smtplib
import statistics
import time
import uuid
from dataclasses import replace

from bench.harness import Target, render, table_rows
from bench.peers.systems import System, systems
from bench.processes import process_cpu_seconds, procfile_command
from bench.stats import Runs

# Mails per run at a 50 ms relay (twice as many at 0 ms), sized to a few seconds.
MAILS = {"None_docs": 400, "post_office_docs": 200, "post_office_tuned": 800}
MAILS |= {"django_mailer_docs": 40, "django_mailer_tuned": 40}
MAILS |= {"celery_email_docs": 200, "celery_email_tuned": 200}
# The batched floor's workers: the Procfile's processes, each on 2 threads
# taking batches of FLOOR_BATCH (bench.batching's best setting), prefetching
# a batch per thread and the next while they run.
FLOOR_BATCH, FLOOR_THREADS = 16, 2

TEXT = """
## Throughput and CPU per mail

Each run queues a backlog the system's own way (bench/peers/driver.py, one
transaction per mail, as a registration would) with nothing consuming it,
then starts the system's senders (this project's and celery-email's workers,
django-mailer's loop, the commands) and times from their start to the relay's
last 250: the same start-up rule for every system, start-up included, and no
queuing process competing with the senders for the two cores. CPU is
user+system time: the queuing process per mail (what a request pays), and the
sending processes with their children (workers, pool children, commands),
less their median CPU when started on an empty queue ($startup s); the whole
pipeline is the two added up, per run. Servers CPU: what the servers every
system shares used over the same run, queuing and sending, per mail: $servers
(not in the whole pipeline; PostgreSQL's is the whole server's, its exited
backends included, whoever used it). $runs
runs per relay, systems interleaved, after one warm-up run each. The same
welcome mail everywhere (mailer/templates/mailer/welcome.txt and .html, an
activation link signed per user). CPU columns: ms per mail (queue, send,
whole: queue + send, and the servers); SMTP conns: connections the relay saw
opened per run.

django-mailer's loop holds its lock file (`MAILER_LOCK_PATH` + ".lock") while
`send_all()` runs, which runmailer_pg's beat starts every
`MAILER_EMPTY_QUEUE_SLEEP` (0.1 s here). SIGTERM ends the loop without
releasing it, and a loop started on that file sends nothing ("lock already in
place. quitting."). So the bench deletes a lock a stopped loop left before the
next start (bench/peers/systems.py), as whoever restarts the loop must
("Faults" shows what happens when nobody does); locks the stops between runs
left: $stale_locks. A system that leaves mails unsent within a run's limit
(120 s, or 1 s per mail) is not measured further: $unsent.

| system | relay | mails/s | queue | send | whole | servers | SMTP conns | renders |
| --- | --- | --- | --- | --- | --- | --- | --- | --- |
$rows

Floor: the project's workers on a task that does nothing (bench/tasks.py
`do_nothing`: `acks_late`, task events, a SUCCESS result), started on
$floor_count queued tasks per run: $floor_rate tasks/s, $floor_cpu ms of
worker CPU per task (less the workers' start-up on an empty queue, as above).
Batched floor: the same with each worker's tasks taken in batches
(`do_nothing_batched`, `MAILER_BATCH_SIZE=$batch_size` on $batch_threads
threads, mailer/batching.py: one result upsert per batch, then each task's
ack and events), the same runs interleaved: $batched_rate tasks/s,
$batched_cpu ms per task, $batched_to_floor the per-mail floor's. What it
keeps is Celery's per-message work (receiving and decoding the message, the
request, its events, its ack): $batched_to_peer the worker CPU of a whole
mail at $best_peer ($best_peer_cpu ms).
Ceiling: a bare smtplib loop over one open connection sending one pre-rendered
message, $ceiling_count per run: $ceiling_rate_50 mails/s at 50 ms (one
connection waits for each reply), $ceiling_rate_0 at 0 ms, $ceiling_cpu ms of
client CPU per mail. At 0 ms this project reaches $to_ceiling of the ceiling's
mails/s, at $cpu_to_ceiling times its CPU per mail.
"""


def run(bench) -> dict:
    everyone = systems(bench.stack.database.vendor)
    bench.stop_project_worker()  # every system's senders start on their backlog
    locks_before = bench.peers.stale_locks.copy()
    startup = {}
    for system in everyone:
        bench.peers.prepare(system)
        idle = [idle_cpu(bench, system) for _ in range(4)]
        startup[system.label] = statistics.median(idle[1:])  # after a warm-up
    rows = {(s.label, d): [] for s in everyone for d in (50, 0)}
    unsent: dict[str, str] = {}  # a peer that left mails unsent: no more runs
    for delay in (50, 0):
        for system in everyone:  # warm-up: database caches and plans
            attempt(bench, system, delay, 0.0, unsent, warm=True)
        for _ in range(bench.size(3, 2)):
            for s in everyone:
                if result := attempt(bench, s, delay, startup[s.label], unsent):
                    rows[(s.label, delay)].append(result)
    runs = bench.size(3, 2)
    return {
        "systems": [(s.label, s.peer) for s in everyone],
        "rows": {
            k: {n: Runs([r[n] for r in v]) for n in v[0]}
            for k, v in rows.items()
            if len(v) == runs
        },
        "unsent": unsent,
        "stale_locks": bench.peers.stale_locks - locks_before,
        "floor": floor(bench, everyone[0], startup["this project"]),
        "ceiling": {d: ceiling(bench, d) for d in (50, 0)},
        "runs": runs,
        "startup": ", ".join(f"{k}: {v:.2f}" for k, v in startup.items()),
    }


class Unsent(Exception):
    """A run ended with mails the relay never accepted."""


def attempt(bench, system: System, delay: int, startup: float, unsent, warm=False):
    """One run, unless the system already left mails unsent. A peer that does
    is that peer's result: it is recorded and runs no more (its queue is no
    longer a fresh backlog); this project doing so fails the figure."""
    if system.label in unsent:
        return None
    try:
        return one_run(bench, system, delay, startup, warm)
    except Unsent as error:
        if system.peer is None:
            raise
        unsent[system.label] = (
            f"{error} ({'warm-up, ' if warm else ''}{delay} ms relay)"
        )
        return None


def idle_cpu(bench, system: System) -> float:
    """CPU seconds of the system's senders started on an empty queue: a
    command's whole run, a worker's or loop's start until it is ready."""
    if system.kind == "command":
        return bench.peers.run_command(system)[0]
    name = f"tp-{system.key}-"
    pids = bench.peers.start(system, name)
    used = sum(map(process_cpu_seconds, pids))
    bench.peers.stop(system, name)
    return used


def one_run(bench, system: System, delay: int, startup: float, warm=False) -> dict:
    """Queue the backlog with nothing consuming it, start the senders, time
    from their start to the relay's last 250."""
    count = bench.size(MAILS[system.key]) * (2 if delay == 0 else 1)
    count = max(20, count // 4) if warm else count
    prefix, tag = bench.prefix("tp"), f"+d{delay}"
    bench.relay.poll()
    connections = bench.relay.connections
    servers = bench.stack.servers_cpu()
    queued = bench.peers.enqueue(system, count=count, prefix=prefix, tag=tag)
    name, pids = f"tp-{system.key}-", []
    if system.kind == "command":
        cpu, started = bench.peers.run_command(system)
    else:
        started = time.time()
        pids = bench.peers.start(system, name)
    emails, limit = list(queued["began"]), max(120, count)
    with contextlib.suppress(AssertionError):  # wait_until's timeout: counted below
        bench.relay.wait_for(emails, timeout=limit)
    if pids:
        cpu = sum(map(process_cpu_seconds, pids))
    servers = {
        k: (v - servers[k]) * 1000 / count for k, v in bench.stack.servers_cpu().items()
    }
    if pids:
        bench.peers.stop(system, name)
    copies = bench.relay.copies(emails)
    if missing := sum(n == 0 for n in copies.values()):
        raise Unsent(f"{missing} of {count} mails unsent after {limit} s")
    accepted = {email: bench.relay.accepted[email][0] for email in emails}
    send_cpu = (cpu - startup) * 1000 / count
    return {
        "rate": count / (max(accepted.values()) - started),
        "enqueue_cpu": queued["cpu_ms"],
        "send_cpu": send_cpu,
        "whole_cpu": queued["cpu_ms"] + send_cpu,
        "connections": bench.relay.connections - connections,
        **{f"server:{k}": v for k, v in servers.items()},
    }


def floor_systems(project: System) -> dict[str, tuple[System, str]]:
    """The floors' workers and tasks: the Procfile's, and batched."""
    argv = procfile_command("worker")
    argv[argv.index("--concurrency") + 1] = str(FLOOR_THREADS)
    multiplier = FLOOR_BATCH * 2 // FLOOR_THREADS + FLOOR_BATCH
    argv[argv.index("--prefetch-multiplier") + 1] = str(multiplier)
    batched = replace(
        project,
        label="floor, batched",
        sender=[["-m", *argv]] * len(project.sender),
        env={"MAILER_BATCH_SIZE": str(FLOOR_BATCH)},
    )
    return {
        "per-mail": (project, "do_nothing"),
        "batched": (batched, "do_nothing_batched"),
    }


def floor(bench, project: System, startup: float) -> dict:
    """This project's workers running a task that does nothing, same options,
    started on the queued tasks as the systems are: one task at a time (the
    Procfile's workers) and in batches, runs interleaved."""
    from django_celery_results.models import TaskResult

    from bench import tasks
    from tests.support import wait_until

    chosen = floor_systems(project)
    idle = {"per-mail": startup}
    idle["batched"] = statistics.median(
        [idle_cpu(bench, chosen["batched"][0]) for _ in range(4)][1:]
    )
    count = bench.size(1000)
    found = {mode: {"rate": [], "cpu": []} for mode in chosen}
    for run in range(bench.size(3, 2) + 1):  # the first is a warm-up
        for mode, (system, task_name) in chosen.items():
            task = getattr(tasks, task_name)
            ids = [str(uuid.uuid4()) for _ in range(count)]
            for task_id in ids:
                task.apply_async(task_id=task_id)
            started = time.time()
            pids = bench.peers.start(system, "floor-")
            done = TaskResult.objects.filter(task_id__in=ids, status="SUCCESS")
            wait_until(lambda d=done: d.count() == count, timeout=120, what=mode)
            last = max(done.values_list("date_done", flat=True)).timestamp()
            used = sum(map(process_cpu_seconds, pids)) - idle[mode]
            bench.peers.stop(system, "floor-")
            if run:
                found[mode]["rate"].append(count / (last - started))
                found[mode]["cpu"].append(used * 1000 / count)
    per_mail = {name: Runs(values) for name, values in found["per-mail"].items()}
    batched = {name: Runs(values) for name, values in found["batched"].items()}
    return per_mail | {"count": count, "batched": batched}


def ceiling(bench, delay: int) -> dict:
    """A bare smtplib loop: one connection, one pre-rendered message."""
    from django.conf import settings

    from bench.peers.driver import welcome_message
    from users.models import User

    user = User(pk=0, email="someone@bench.example", password="!")
    raw = welcome_message(user).message().as_bytes(linesep="\r\n")
    count = bench.size(40 if delay else 1000, 10 if delay else 200)
    rate, cpu = [], []
    for run in range(bench.size(3, 2) + 1):  # the first is a warm-up
        emails = bench.emails("ceiling", count, f"+d{delay}")
        with smtplib.SMTP(settings.EMAIL_HOST, settings.EMAIL_PORT, timeout=30) as smtp:
            clock, used = time.perf_counter(), time.process_time()
            for email in emails:
                smtp.sendmail(settings.DEFAULT_FROM_EMAIL, [email], raw)
            wall, used = time.perf_counter() - clock, time.process_time() - used
        if run:
            rate.append(count / wall)
            cpu.append(used * 1000 / count)
    bench.relay.wait_for(emails, timeout=60)
    return {"rate": Runs(rate), "cpu": Runs(cpu), "count": count}


def section(data) -> tuple[str, list[Target]]:
    rows, unsent = data["rows"], data["unsent"]
    lines = [
        [label, f"{d} ms", r["rate"].show(), r["enqueue_cpu"].show("{:.2f}"),
         r["send_cpu"].show("{:.2f}"), r["whole_cpu"].show("{:.2f}"),
         " / ".join(r[k].show("{:.2f}") for k in r if k.startswith("server:")),
         r["connections"].show("{:.0f}"),
         "in the request" if peer else "in the worker"]
        if (r := rows.get((label, d))) else
        [label, f"{d} ms", f"not measured: {unsent[label]}", "", "", "", "", "", ""]
        for label, peer in data["systems"] for d in (50, 0)
    ]  # fmt: skip
    targets = []
    for delay in (50, 0):
        ours = rows[("this project", delay)]["rate"].median
        targets.append(
            versus_best(data, delay, "rate", max, ours, "Throughput at a {} ms relay")
        )
    ours_row = rows[("this project", 0)]
    ours, whole = ours_row["send_cpu"].median, ours_row["whole_cpu"].median
    floor_cpu = data["floor"]["cpu"].median
    targets += [
        versus_best(
            data,
            0,
            "whole_cpu",
            min,
            whole,
            "Whole-pipeline CPU per mail, queue + send ({} ms relay)",
        ),
        versus_best(
            data, 0, "send_cpu", min, ours, "Worker CPU per mail ({} ms relay)"
        ),
        Target(
            "Worker CPU per mail (0 ms relay) <= 1.0x the floor",
            f"{ours / floor_cpu:.2f}x ({ours:.2f} vs {floor_cpu:.2f} ms)",
            ours <= floor_cpu,
        ),
    ]
    ceiling, floor_ = data["ceiling"], data["floor"]
    batched_cpu = floor_["batched"]["cpu"].median
    peers = [p for p, peer in data["systems"] if peer and (p, 0) in rows]
    best = min(peers, key=lambda p: rows[(p, 0)]["send_cpu"].median)
    best_cpu = rows[(best, 0)]["send_cpu"].median
    project_0 = rows[("this project", 0)]["rate"].median
    text = render(
        TEXT,
        runs=data["runs"],
        startup=data["startup"],
        stale_locks=sum(data["stale_locks"].values()),
        unsent=", ".join(unsent) or "none did",
        rows=table_rows(lines),
        servers=" / ".join(
            k.split(":")[1] for k in ours_row if k.startswith("server:")
        ),
        floor_count=floor_["count"],
        floor_rate=floor_["rate"].show(),
        floor_cpu=floor_["cpu"].show("{:.2f}"),
        batch_size=FLOOR_BATCH,
        batch_threads=FLOOR_THREADS,
        batched_rate=floor_["batched"]["rate"].show(),
        batched_cpu=floor_["batched"]["cpu"].show("{:.2f}"),
        batched_to_floor=f"{batched_cpu / floor_cpu:.2f}x",
        batched_to_peer=f"{batched_cpu / best_cpu:.2f}x",
        best_peer=best,
        best_peer_cpu=f"{best_cpu:.2f}",
        ceiling_count=f"{ceiling[50]['count']} (50 ms), {ceiling[0]['count']} (0 ms)",
        ceiling_rate_50=ceiling[50]["rate"].show(),
        ceiling_rate_0=ceiling[0]["rate"].show(),
        ceiling_cpu=ceiling[0]["cpu"].show("{:.3f}"),
        to_ceiling=f"{project_0 / ceiling[0]['rate'].median:.0%}",
        cpu_to_ceiling=f"{ours / ceiling[0]['cpu'].median:.0f}",
    )
    return text, targets


def versus_best(data, delay: int, name: str, pick, ours: float, what: str) -> Target:
    """This project against the best peer measured at `delay`: `pick` is max
    for mails/s ("rate"), min for CPU per mail ("send_cpu")."""
    rows, higher = data["rows"], pick is max
    title = f"{what.format(delay)} {'>=' if higher else '<='} the best peer's"
    peers = [p for p, peer in data["systems"] if peer and (p, delay) in rows]
    if not peers:
        return Target(title, "no peer measured", None)
    best = pick(peers, key=lambda p: rows[(p, delay)][name].median)
    theirs = rows[(best, delay)][name].median
    unit = "{:.0f} vs {:.0f} mails/s" if higher else "{:.2f} vs {:.2f} ms"
    values = unit.format(ours, theirs)
    met = ours >= theirs if higher else ours <= theirs
    return Target(title, f"{ours / theirs:.2f}x {best} ({values})", met)
