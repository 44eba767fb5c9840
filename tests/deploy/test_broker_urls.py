"""The broker URLs docs/DEPLOY.md gives work end to end with a real worker.

Redis behind Sentinel (`sentinel://` + REDIS_SENTINEL_MASTER) and Redis with a
password over verified TLS (`rediss://...?ssl_cert_reqs=required&ssl_ca_certs=`):
each test starts that Redis, a worker whose REDIS_URL points at it, publishes
one welcome mail there and sees it arrive.
"""

import shutil
import subprocess
from pathlib import Path

import pytest
import redis

from celery_app import app
from mailer.models import Delivery
from mailer.outbox import create_welcome_delivery
from mailer.tasks import send_welcome_email
from project.redis_transport import transport_for
from tests.conftest import worker_env
from tests.factories import UserFactory
from tests.support import (
    RedisServer,
    WorkerProcess,
    free_port,
    stop_process,
    wait_for_delivery,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def processes():
    """Processes a test starts; stopped by pid afterwards, last first."""
    started: list = []
    yield started
    for process in reversed(started):
        if isinstance(process, WorkerProcess | RedisServer):
            process.stop()
        else:
            stop_process(process)


def send_one_mail_through(url: str, *, address: str, **transport_options) -> None:
    delivery = create_welcome_delivery(user=UserFactory(email=address))
    with app.connection_for_write(
        url, transport=transport_for(url), transport_options=transport_options
    ) as conn:
        send_welcome_email.apply_async(
            args=(delivery.pk,),
            task_id=delivery.task_id,
            producer=app.amqp.Producer(conn),
        )
    wait_for_delivery(email=address, status=Delivery.Status.SENT, timeout=30)


def start_worker(processes, tmp_path: Path, **env: str) -> WorkerProcess:
    worker = WorkerProcess(
        env=worker_env(**env), name="deploy", log_path=tmp_path / "worker.log"
    )
    processes.append(worker)
    return worker.start()


def test_a_worker_finds_redis_through_sentinel(processes, smtp, tmp_path):
    master = RedisServer(free_port())
    processes.append(master)
    master.start()
    port = free_port()
    config = tmp_path / "sentinel.conf"
    config.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor welcome 127.0.0.1 {master.port} 1\n"
    )
    processes.append(
        subprocess.Popen(
            [shutil.which("redis-server"), str(config), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )
    sentinel = redis.Redis(port=port, socket_timeout=1, decode_responses=True)
    wait_until(
        lambda: _ask(sentinel, "SENTINEL", "get-master-addr-by-name", "welcome"),
        timeout=10,
        what="sentinel watching the master",
    )

    url = f"sentinel://127.0.0.1:{port}/0"
    start_worker(processes, tmp_path, REDIS_URL=url, REDIS_SENTINEL_MASTER="welcome")
    send_one_mail_through(url, address="sentinel@example.com", master_name="welcome")

    assert len(smtp.mails_to("sentinel@example.com")) == 1
    assert master.client().exists("_kombu.binding.celery")


def test_a_worker_reaches_redis_with_a_password_over_verified_tls(
    processes, smtp, tmp_path
):
    ca, cert, key = make_certificates(tmp_path)
    port = free_port()
    processes.append(
        subprocess.Popen(
            [shutil.which("redis-server"), "--port", "0", "--bind", "127.0.0.1"]
            + ["--tls-port", str(port), "--tls-cert-file", str(cert)]
            + ["--tls-key-file", str(key), "--tls-ca-cert-file", str(ca)]
            + ["--tls-auth-clients", "no", "--requirepass", "s3cret"]
            + ["--save", "", "--dir", str(tmp_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )
    url = (
        f"rediss://:s3cret@127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={ca}"
    )
    client = redis.Redis.from_url(url, socket_timeout=1)
    wait_until(lambda: _ask(client, "PING"), timeout=10, what="redis over TLS")

    start_worker(processes, tmp_path, REDIS_URL=url)
    send_one_mail_through(url, address="tls@example.com")

    assert len(smtp.mails_to("tls@example.com")) == 1


def _ask(client: redis.Redis, *command: str):
    try:
        return client.execute_command(*command)
    except redis.ConnectionError:
        return None


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 it signed."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    ca, ca_key = directory / "ca.pem", directory / "ca.key"
    cert, key = directory / "server.pem", directory / "server.key"
    request, extensions = directory / "server.csr", directory / "san.ext"
    extensions.write_text("subjectAltName=IP:127.0.0.1\n")
    for command in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-keyout", ca_key, "-out", ca, "-subj", "/CN=welcome test CA"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key]
        + ["-out", request, "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", request, "-CA", ca, "-CAkey", ca_key]
        + ["-CAcreateserial", "-out", cert, "-days", "1", "-extfile", extensions],
    ):
        subprocess.run(
            [openssl, *map(str, command)], check=True, capture_output=True, timeout=30
        )
    return ca, cert, key
