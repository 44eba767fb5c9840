"""A system's worker restarted under the same name is waited for anew."""

import time

from bench.peers.systems import Peers, System
from bench.processes import Database, Stack

# Says " ready." after a second, as a Celery worker does once it has booted.
WORKER = "import time; time.sleep(1); print('w@h ready.', flush=True); time.sleep(60)"


def test_a_restarted_worker_is_ready_only_once_it_says_so_again(tmp_path):
    stack = Stack(
        directory=tmp_path, database=Database(server_url=None, directory=tmp_path)
    )
    system = System("fake", None, False, "worker", [["-c", WORKER, "worker"]])
    peers = Peers(stack)
    try:
        for start in range(2):
            clock = time.monotonic()
            peers.start(system, "w-")
            waited = time.monotonic() - clock
            peers.stop(system, "w-")

            assert waited >= 1.0, f"start {start} did not wait for its own ready"
        assert stack.log("w-0").count(" ready.") == 2
    finally:
        stack.stop_all()
