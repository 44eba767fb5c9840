"""prometheus-client's multiprocess mode, shared by web and worker processes.

With PROMETHEUS_MULTIPROC_DIR set, every process writes its metrics to
memory-mapped files in that directory and `GET /metrics` sums them, so the
numbers of every gunicorn worker and every Celery worker process on a host
reach Prometheus through one scrape (docs/monitoring.md, "Aggregation").

Files are named after a process identifier. prometheus-client's default is
the pid alone; containers sharing the directory through a volume each number
their processes from 1, so the identifier here is the host name and the pid.
"""

import os
import socket

from prometheus_client import disable_created_metrics, values

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiproc_dir() -> str:
    """The directory of this process's metric files; "" outside multiprocess mode."""
    return os.environ.get(MULTIPROC_ENV, "")


def process_identifier() -> str:
    """Name this process's metric files: host name and pid, no underscore.

    prometheus-client splits a file's name on underscores to read its type
    and mode, so the identifier must hold none.
    """
    host = socket.gethostname().replace("_", "-")
    return f"{host}-{os.getpid()}"


def configure_metrics() -> None:
    """Make metrics created from now on write to PROMETHEUS_MULTIPROC_DIR.

    Runs when a metrics module is imported, before it creates a metric:
    prometheus-client binds a metric's storage when the metric is made.
    Also drops the `_created` series, which multiprocess mode never has:
    the page looks the same with or without it. Idempotent.
    """
    disable_created_metrics()
    directory = multiproc_dir()
    if not directory or getattr(values.ValueClass, "_welcome_multiproc", False):
        return
    os.makedirs(directory, exist_ok=True)
    value_class = values.MultiProcessValue(process_identifier=process_identifier)
    value_class._welcome_multiproc = True
    values.ValueClass = value_class


def mark_this_process_dead() -> None:
    """Drop this process's live gauges (the relay's state) as it exits."""
    directory = multiproc_dir()
    if directory:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(process_identifier(), directory)
