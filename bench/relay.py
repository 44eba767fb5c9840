"""An SMTP relay for the benchmark: accepts every mail after a delay.

    python -m bench.relay --port 2525 --delay-ms 50 --log relay.log

The delay applies to each message before its 250 reply; a recipient whose
local part carries `+d<ms>` (`ada+d200@example.com`) gets that delay
instead, so one relay serves every figure without a restart; `+f<n>`
(`ada+f2@...`) answers 451 to that recipient's first n messages. Each 250 is
logged as `S <unix time> <recipient>`, each new connection as `C <unix time>`.
"""

import argparse
import asyncio
import logging
import re
import signal
import threading
import time
from collections import Counter

from aiosmtpd.controller import Controller

DELAY_TAG = re.compile(r"\+d(\d+)@")
FAIL_TAG = re.compile(r"\+f(\d+)[+@]")


class DelayingHandler:
    def __init__(self, delay_ms: float, log) -> None:
        self.delay_ms = delay_ms
        self.log = log
        self.refused: Counter = Counter()

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        self.log.write(f"C {time.time():.6f}\n")
        return responses

    async def handle_DATA(self, server, session, envelope) -> str:
        rcpt = envelope.rcpt_tos[0] if envelope.rcpt_tos else ""
        tagged = DELAY_TAG.search(rcpt)
        delay_ms = float(tagged.group(1)) if tagged else self.delay_ms
        failing = FAIL_TAG.search(rcpt)
        if failing and self.refused[rcpt] < int(failing.group(1)):
            self.refused[rcpt] += 1
            return "451 4.3.0 Try again later"
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        self.log.write(f"S {time.time():.6f} {rcpt}\n")
        return "250 Message accepted for delivery"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--log", required=True)
    args = parser.parse_args()
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with open(args.log, "a", buffering=1) as log:
        controller = Controller(
            DelayingHandler(args.delay_ms, log), hostname="127.0.0.1", port=args.port
        )
        controller.start()
        print(f"relay ready on 127.0.0.1:{args.port}", flush=True)
        stop.wait()
        controller.stop()


if __name__ == "__main__":
    main()
