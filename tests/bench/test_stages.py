"""Where each ms goes: py-spy's stacks given to stages, and rows that add up."""

import pytest

from bench import fig_stages
from bench.fig_stages import OTHER, POST_OFFICE, PROJECT, STAGES, stage_of

TASK = [
    "Thread._bootstrap (threading.py:1002)",
    "_worker (concurrent/futures/thread.py:81)",
    "apply_target (celery/concurrency/base.py:30)",
    "build_tracer.<locals>.trace_task (celery/app/trace.py:479)",
    "send_welcome_email (mailer/tasks.py:38)",
    "_send (mailer/tasks.py:49)",
    "attempt_delivery (mailer/attempts.py:125)",
]
SEND = [*TASK, "_claim_and_send (mailer/attempts.py:143)",
        "send_delivery (mailer/claims.py:131)"]  # fmt: skip
LOOP = [
    "Evloop.start (celery/worker/consumer/consumer.py:944)",
    "asynloop (celery/worker/loops.py:130)",
    "Hub.create_loop (kombu/asynchronous/hub.py:406)",
]
REDIS = "AbstractConnection.send_packed_command (redis/connection.py:1349)"
SQL = "Cursor.execute (psycopg/cursor.py:113)"

# One stack per stage, from a worker draining a backlog (py-spy's raw format).
PROJECT_STACKS = {
    "consume": [*LOOP, "Channel._brpop_start (kombu/transport/redis.py:1474)", REDIS],
    "claim": [*SEND[:-1], "claim_delivery (mailer/claims.py:33)",
              "_claim_returning (mailer/claims.py:78)", SQL],
    "render": [*SEND, "build_message (mailer/messages.py:52)",
               "render_to_string (django/template/loader.py:62)"],
    "token": [*SEND, "build_message (mailer/messages.py:46)",
              "activation_url (mailer/messages.py:82)",
              "make_activation_token (users/tokens.py:28)",
              "Signer.sign_object (django/core/signing.py:255)"],
    "MIME": [*SEND, "Connection.send (mailer/pool.py:72)",
             "EmailBackend._send (django/core/mail/backends/smtp.py:166)",
             "MIMEMixin.as_bytes (django/core/mail/message.py:133)",
             "Generator.flatten (email/generator.py:115)"],
    "SMTP": [*SEND, "Connection.send (mailer/pool.py:72)",
             "EmailBackend._send (django/core/mail/backends/smtp.py:171)",
             "SMTP.sendmail (smtplib.py:881)", "SMTP.mail (smtplib.py:545)"],
    "mark": [*TASK, "_record_sent (mailer/attempts.py:320)",
             "mark_sent (mailer/claims.py:176)", SQL],
    "result": [*TASK[:4], "Task.backend (celery/app/task.py:1100)",
               "DatabaseBackend.store_result (mailer/results.py:60)", SQL],
    "events": [*TASK[:4], "Request.on_success (celery/worker/request.py:658)",
               "EventDispatcher.send (celery/events/dispatcher.py:203)",
               "Consumer.on_send_event_buffered "
               "(celery/worker/consumer/consumer.py:704)",
               "_Waker.wake (kombu/asynchronous/hub.py:66)"],
    "ack": [*TASK[:4], "Request.acknowledge (celery/worker/request.py:633)",
            "Message.ack (kombu/message.py:126)",
            "Channel.basic_ack (kombu/transport/redis.py:1047)", REDIS],
    "metrics": [*TASK, "_counted (mailer/attempts.py:216)",
                "record_attempt (mailer/metrics.py:150)",
                "Counter.inc (prometheus_client/metrics.py:313)"],
    "logs": [*TASK[:4], "info (celery/app/trace.py:129)",
             "Logger.info (logging/__init__.py:1489)",
             "StreamHandler.emit (logging/__init__.py:1113)"],
    "budget": [*TASK, "reserve_send (mailer/budget.py:356)",
               "_run (mailer/budget.py:496)", REDIS],
    "suppression": [*TASK, "_claim_and_send (mailer/attempts.py:139)",
                    "withhold (mailer/suppression.py:87)",
                    "is_suppressed (mailer/suppression.py:45)", SQL],
    OTHER: [*TASK, "Atomic.__enter__ (django/db/transaction.py:183)"],
}  # fmt: skip

POOL = [
    "Thread._bootstrap (threading.py:1002)",
    "worker (multiprocessing/pool.py:125)",
    "_send_bulk.<locals>._send_email (post_office/mail.py:411)",
    "Email.dispatch (post_office/models.py:224)",
]
COMMAND = [
    "execute_from_command_line (django/core/management/__init__.py:442)",
    "send_queued_mail_until_done (post_office/mail.py:528)",
    "send_queued (post_office/mail.py:305)",
]
POST_OFFICE_STACKS = {
    "consume": [*POOL[:2], "SimpleQueue.get (multiprocessing/queues.py:367)"],
    "claim": [*COMMAND, "QuerySet.__iter__ (django/db/models/query.py:386)", SQL],
    "MIME": [*COMMAND, "_send_bulk (post_office/mail.py:395)",
             "Email.prepare_email_message (post_office/models.py:152)",
             "EmailMessage.__init__ (django/core/mail/message.py:240)"],
    "SMTP": [*POOL, "EmailBackend.send_messages "
             "(django/core/mail/backends/smtp.py:140)",
             "SMTP.sendmail (smtplib.py:881)"],
    "mark": [*COMMAND, "_send_bulk (post_office/mail.py:458)",
             "QuerySet.update (django/db/models/query.py:1253)", SQL],
    "result": [*COMMAND, "_send_bulk (post_office/mail.py:504)",
               "QuerySet.bulk_create (django/db/models/query.py:811)", SQL],
    "logs": [*COMMAND, "Logger.info (logging/__init__.py:1489)"],
}  # fmt: skip


@pytest.mark.parametrize("stage", list(PROJECT_STACKS))
def test_each_stage_of_the_project_takes_its_frames(stage):
    assert stage_of(PROJECT_STACKS[stage], PROJECT) == stage


@pytest.mark.parametrize("stage", list(POST_OFFICE_STACKS))
def test_each_stage_of_post_office_takes_its_frames(stage):
    assert stage_of(POST_OFFICE_STACKS[stage], POST_OFFICE) == stage


def test_every_stage_the_issue_names_is_a_row_with_a_rule():
    named = ["consume", "claim", "render", "MIME", "SMTP", "mark", "result",
             "events", "ack", "metrics", "logs"]  # fmt: skip
    rows = [stage for stage, *_ in STAGES]
    ruled = {stage for stage, *_ in PROJECT}

    assert set(named) <= set(rows)
    assert set(rows) == ruled
    assert {stage for stage, *_ in POST_OFFICE} <= set(rows)


def one_run(cpu_ms, **samples):
    return {"cpu_ms": cpu_ms, "samples": samples, "sampled": 1.25}


def data():
    project = [
        one_run(10.0, consume=30, claim=10, MIME=20, logs=5, other=35),
        one_run(12.0, consume=20, claim=20, MIME=25, logs=5, other=30),
        one_run(11.0, consume=25, claim=15, MIME=20, SMTP=10, other=30),
    ]
    post_office = [one_run(3.0, MIME=50, SMTP=40, claim=10)] * 3
    return {"count": 100, "runs": 3, "project": project, "post_office": post_office}


def test_the_stages_add_up_to_the_measured_cpu_per_mail():
    for runs in (data()["project"], data()["post_office"]):
        found = fig_stages.shares(runs)
        total = sum(stage["ms"] for stage in found["stages"].values())

        assert total == pytest.approx(found["whole"].median)
        assert sum(s["share"] for s in found["stages"].values()) == pytest.approx(1)


def test_a_stage_is_its_share_of_every_runs_samples_times_the_median_cpu():
    found = fig_stages.shares(data()["project"])["stages"]

    assert found["consume"]["share"] == pytest.approx(75 / 300)
    assert found["consume"]["ms"] == pytest.approx(11.0 * 75 / 300)
    assert found["consume"]["runs"].values == pytest.approx([3.3, 2.2, 2.75])


def test_the_section_shows_every_stage_and_the_whole():
    text, targets = fig_stages.section(data())
    rows = [line for line in text.splitlines() if line.startswith("| ")]

    assert [row.split(" | ")[0][2:] for row in rows[2:]] == [
        *(stage for stage, *_ in STAGES),
        "whole",
    ]
    assert "| 11.00 (10.00-12.00) |" in rows[-1]
    assert "| in the request | - |" in text  # post_office renders elsewhere
    assert targets == []


def test_a_run_with_no_samples_fails_the_figure():
    with pytest.raises(RuntimeError, match="no samples"):
        fig_stages.measured([], PROJECT, 1.0, 100)


def test_start_up_samples_are_left_out():
    importing = [*TASK, "_find_and_load (<frozen importlib._bootstrap>:1176)"]
    run = fig_stages.measured([(importing, 5), (PROJECT_STACKS["claim"], 5)],
                              PROJECT, 1.0, 100)  # fmt: skip

    assert run["samples"] == {"claim": 5}


def test_without_py_spy_the_page_says_not_measured():
    text, targets = fig_stages.section({"missing": True})

    assert text == "## Where each ms goes\n\nnot measured: py-spy missing.\n"
    assert targets == []


def test_without_py_spy_the_figure_runs_nothing(monkeypatch):
    monkeypatch.setattr(fig_stages, "spy_binary", lambda: None)

    assert fig_stages.run(bench=None) == {"missing": True}


def test_raw_stacks_are_read_root_first():
    raw = "a (x.py:1);b (y.py:2) 7\n 3\nc (z.py:3) 1\n"

    assert fig_stages.parse(raw) == [
        (["a (x.py:1)", "b (y.py:2)"], 7),
        (["c (z.py:3)"], 1),
    ]
