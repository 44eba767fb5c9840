"""The checker: what the relay received against what the database promised.

Pure functions over plain records, so tests/soak/test_checker.py can feed it
made-up runs (a duplicate, a missing mail) and see it fail.
"""

import math
from collections import defaultdict
from dataclasses import dataclass, field

from tests.soak.faults import THROTTLE_KINDS, AppliedFault, FaultKind
from tests.soak.load import Registration
from tests.soak.relay import THROTTLE_RATE, Accepted

# No mail's commit-to-250 may exceed the longest fault it lived through plus this.
LATENESS_ALLOWANCE = 30.0  # seconds


@dataclass(frozen=True)
class WelcomeRow:
    """A registered user and their welcome outbox row, as the database has them."""

    email: str
    message_id: str | None  # None: the user has no welcome row
    status: str | None
    attempts: int | None
    created_at: float | None  # time.monotonic() of the row's created_at
    last_error: str = ""


@dataclass(frozen=True)
class Duplicate:
    """Copies of one Message-ID; the extra ones must each fall in the window."""

    message_id: str
    email: str
    copies: list[Accepted]
    in_window: bool
    explanation: str


@dataclass(frozen=True)
class Missing:
    email: str
    status: str | None
    attempts: int | None
    last_error: str
    answered: int | None


@dataclass(frozen=True)
class Recovery:
    """The mails one fault held up, and how long after its end the last came."""

    fault: AppliedFault
    held: int = 0
    never_delivered: int = 0
    seconds: float | None = None  # fault end -> the last held mail's 250
    overlapping: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Late:
    """A mail whose commit-to-250 exceeded the longest fault it lived through + 30 s."""

    email: str
    seconds: float  # its commit to its first 250
    bound: float
    faults: list[int]  # the faults it lived through


@dataclass(frozen=True)
class Pace:
    """What the relay accepted while it throttled, against what it allowed."""

    fault: AppliedFault
    seconds: float
    accepted: int  # 250s while the fault held
    offered: int  # registrations answered while the fault held
    allowed: float | None  # mails a second; None: a connection cap, no rate

    @property
    def achieved(self) -> float:
        return self.accepted / self.seconds if self.seconds else 0.0

    @property
    def offered_rate(self) -> float:
        return self.offered / self.seconds if self.seconds else 0.0

    @property
    def share(self) -> float | None:
        """Achieved over what could be sent: the allowed rate, or the load."""
        ceiling = self.offered_rate if self.allowed is None else self.allowed
        return self.achieved / ceiling if ceiling else None


@dataclass
class Verdict:
    answers: dict[str, int]
    registered: int
    delivered: int
    missing: list[Missing]
    duplicates: list[Duplicate]
    unexpected: list[str]
    latency: dict[str, float | None]
    recoveries: list[Recovery]
    late: list[Late] = field(default_factory=list)
    paces: list[Pace] = field(default_factory=list)
    exits: list[str] = field(default_factory=list)  # processes that died alone
    # Faults the injector could not apply: a run that skipped them proves less.
    fault_errors: list[str] = field(default_factory=list)

    @property
    def exactly_once(self) -> int:
        """Registered addresses with one mail, of one Message-ID."""
        return self.delivered - len({d.email for d in self.duplicates})

    @property
    def ok(self) -> bool:
        outside = [d for d in self.duplicates if not d.in_window]
        return not (
            self.missing
            or outside
            or self.unexpected
            or self.late
            or self.exits
            or self.fault_errors
        )


def check(
    *,
    registrations: list[Registration],
    rows: list[WelcomeRow],
    accepted: list[Accepted],
    faults: list[AppliedFault],
    exits: list[str] = (),
    fault_errors: list[str] = (),
) -> Verdict:
    """Compare the relay's record with the registrations and the database.

    `exits`: the processes that exited when no fault asked them to;
    `fault_errors`: the faults that could not be applied. Any fails the run.
    """
    rows_by_email = {row.email.lower(): row for row in rows}
    answered = {r.email.lower(): r for r in registrations if r.status == 202}
    # A user row counts even without a 202 (the commit landed, the answer not).
    registered = set(answered) | set(rows_by_email)
    copies = _copies_by_recipient(accepted)
    committed = _commit_times(registered, answered, rows_by_email)
    return Verdict(
        answers=_answers(registrations),
        registered=len(registered),
        delivered=len(registered & set(copies)),
        missing=_missing(registered, copies, rows_by_email, answered),
        duplicates=_duplicates(copies, faults),
        unexpected=_unexpected(registered, copies, rows_by_email),
        latency=_latency(answered, copies),
        recoveries=recoveries(committed, copies, faults),
        late=late_mails(committed, copies, faults),
        paces=paces(registrations, accepted, faults),
        exits=list(exits),
        fault_errors=list(fault_errors),
    )


def _copies_by_recipient(accepted: list[Accepted]) -> dict[str, list[Accepted]]:
    copies: dict[str, list[Accepted]] = defaultdict(list)
    for mail in sorted(accepted, key=lambda mail: mail.at):
        copies[mail.recipient.lower()].append(mail)
    return dict(copies)


def _answers(registrations: list[Registration]) -> dict[str, int]:
    answers: dict[str, int] = defaultdict(int)
    for registration in registrations:
        answers[str(registration.status or registration.error or "no answer")] += 1
    return dict(answers)


def _missing(registered, copies, rows_by_email, answered) -> list[Missing]:
    missing = []
    for email in sorted(registered - set(copies)):
        row = rows_by_email.get(email)
        missing.append(
            Missing(
                email=email,
                status=row.status if row else None,
                attempts=row.attempts if row else None,
                last_error=row.last_error if row else "no user row",
                answered=202 if email in answered else None,
            )
        )
    return missing


def _duplicates(copies, faults: list[AppliedFault]) -> list[Duplicate]:
    by_message: dict[str, list[Accepted]] = defaultdict(list)
    for mails in copies.values():
        for mail in mails:
            by_message[mail.message_id].append(mail)
    duplicates = []
    for message_id, mails in sorted(by_message.items()):
        if len(mails) < 2:
            continue
        mails.sort(key=lambda mail: mail.at)
        reasons = [
            _window_reason(mail, later, faults)
            for mail, later in zip(mails, mails[1:], strict=False)
        ]
        in_window = all(reasons)
        explanation = "; ".join(
            reason
            or f"copy at {mail.wall:.3f} by pid {mail.sender_pid}: no kill "
            "or freeze of its worker before the next copy"
            for reason, mail in zip(reasons, mails, strict=False)
        )
        duplicates.append(
            Duplicate(message_id, mails[0].recipient, mails, in_window, explanation)
        )
    return duplicates


# The relay stamps a 250 when its event loop gets to the mail, after the
# worker's last byte: a kill stamped up to this long before the 250 can still
# have come after that byte (one soak saw a 250 stamped 4 ms after the kill).
RELAY_STAMP_LAG = 0.25


def _window_reason(mail: Accepted, later: Accepted, faults) -> str:
    """Why `mail` may have a second copy: its worker died or froze after the 250.

    The documented window: the relay said 250, and the worker was killed (or
    frozen) before it recorded the row as sent, so the row was sent again.
    The row was not recorded before `later` was claimed, so a kill or freeze
    of the sending worker between the two 250s is that window.
    """
    for fault in faults:
        if (
            fault.abrupt
            and fault.pid is not None
            and fault.pid == mail.sender_pid
            and fault.started is not None
            and mail.at - RELAY_STAMP_LAG <= fault.started <= later.at
        ):
            gap = fault.started - mail.at
            return (
                f"fault #{fault.number} {fault.kind} hit pid {fault.pid} "
                f"{gap:.2f} s after the 250"
            )
    return ""


def _unexpected(registered, copies, rows_by_email) -> list[str]:
    """Mails to addresses nobody registered, or with another Message-ID."""
    problems = []
    for email, mails in sorted(copies.items()):
        if email not in registered:
            problems.append(
                f"{email}: {len(mails)} mail(s) to an address not registered"
            )
            continue
        row = rows_by_email.get(email)
        for mail in mails:
            if row is None or mail.message_id != row.message_id:
                expected = row.message_id if row else "no welcome row"
                problems.append(
                    f"{email}: Message-ID {mail.message_id}, its row has {expected}"
                )
    return problems


def _latency(answered, copies) -> dict[str, float | None]:
    latencies = sorted(
        copies[email][0].at - registration.answered_at
        for email, registration in answered.items()
        if email in copies
    )
    return {
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "max": latencies[-1] if latencies else None,
    }


def percentile(values: list[float], rank: float) -> float | None:
    """Nearest-rank percentile of sorted `values`; None for none."""
    if not values:
        return None
    index = max(0, math.ceil(rank / 100 * len(values)) - 1)
    return values[index]


def _commit_times(registered, answered, rows_by_email) -> dict[str, float]:
    """When each registration committed: its 202, else its row's created_at."""
    times = {}
    for email in registered:
        if email in answered:
            times[email] = answered[email].answered_at
        elif rows_by_email[email].created_at is not None:
            times[email] = rows_by_email[email].created_at
    return times


def recoveries(
    committed: dict[str, float],
    copies: dict[str, list[Accepted]],
    faults: list[AppliedFault],
) -> list[Recovery]:
    """For each fault: the mails it held up, and its end -> the last one's 250.

    A mail is held up by a fault when it committed before the fault ended
    and its first copy came after. A mail held up by several (overlapping or
    one after another) counts for the one that ended last before its 250.
    """
    ended = [f for f in faults if f.started is not None and f.ended is not None]
    held: dict[int, list[float]] = defaultdict(list)
    never: dict[int, int] = defaultdict(int)
    for email, commit in committed.items():
        first = copies[email][0].at if email in copies else math.inf
        candidates = [f for f in ended if commit < f.ended < first]
        if not candidates:
            continue
        last = max(candidates, key=lambda f: f.ended)
        if first == math.inf:
            never[last.number] += 1
        else:
            held[last.number].append(first - last.ended)
    return [
        Recovery(
            fault=fault,
            held=len(held[fault.number]) + never[fault.number],
            never_delivered=never[fault.number],
            seconds=max(held[fault.number]) if held[fault.number] else None,
            overlapping=[
                other.number
                for other in ended
                if other is not fault
                and other.started < fault.ended
                and fault.started < other.ended
            ],
        )
        for fault in ended
    ]


def late_mails(
    committed: dict[str, float],
    copies: dict[str, list[Accepted]],
    faults: list[AppliedFault],
) -> list[Late]:
    """Mails whose commit-to-250 exceeds the longest fault they lived through + 30 s.

    A mail lived through a fault that held at any moment between its commit
    and its first 250; with none, its bound is LATENESS_ALLOWANCE alone.
    Faults that overlap (Redis down while the relay stalls and a worker is
    frozen) are one fault from start to end: the mail could move during none
    of it. Faults with a gap between them stay apart.
    """
    ended = [f for f in faults if f.started is not None and f.ended is not None]
    late = []
    for email, commit in sorted(committed.items()):
        if email not in copies:
            continue  # missing: counted there
        first = copies[email][0].at
        lived = [f for f in ended if f.started < first and f.ended > commit]
        longest = max(_spells(lived), default=0.0)
        bound = longest + LATENESS_ALLOWANCE
        if first - commit > bound:
            late.append(Late(email, first - commit, bound, [f.number for f in lived]))
    return late


def _spells(faults: list[AppliedFault]) -> list[float]:
    """Seconds of each run of overlapping faults, in order of their start."""
    spells: list[list[float]] = []
    for fault in sorted(faults, key=lambda f: f.started):
        if spells and fault.started <= spells[-1][1]:
            spells[-1][1] = max(spells[-1][1], fault.ended)
        else:
            spells.append([fault.started, fault.ended])
    return [end - start for start, end in spells]


def paces(
    registrations: list[Registration],
    accepted: list[Accepted],
    faults: list[AppliedFault],
) -> list[Pace]:
    """For each throttling fault: 250s a second while it held, and what it allowed."""
    result = []
    for fault in faults:
        if fault.kind not in THROTTLE_KINDS or None in (fault.started, fault.ended):
            continue
        start, end = fault.started, fault.ended
        result.append(
            Pace(
                fault=fault,
                seconds=end - start,
                accepted=sum(1 for mail in accepted if start <= mail.at <= end),
                offered=sum(
                    1
                    for r in registrations
                    if r.status == 202 and start <= r.answered_at <= end
                ),
                allowed=(
                    float(THROTTLE_RATE)
                    if fault.kind is FaultKind.RELAY_THROTTLE
                    else None
                ),
            )
        )
    return result


TARGETS = {
    FaultKind.WORKER_KILL: "<= 15 s",
    FaultKind.WORKER_FREEZE: "<= 30 s from the freeze, by another worker",
    FaultKind.REDIS_DOWN: "<= 10 s after Redis answers",
    FaultKind.REDIS_RESTART: "<= 10 s after Redis answers",
    FaultKind.REDIS_RESTART_EMPTY: "<= 10 s after Redis answers",
    **dict.fromkeys(
        [
            k
            for k in FaultKind
            if k.value.startswith("relay-") and k not in THROTTLE_KINDS
        ],
        "<= 15 s after the relay answers",
    ),
    FaultKind.RELAY_CONNECTION_CAP: "the load's pace held (see Throttling)",
    FaultKind.RELAY_THROTTLE: ">= 80% of the allowed rate (see Throttling)",
}


@dataclass(frozen=True)
class KindSummary:
    kind: FaultKind
    faults: int
    held: int
    never_delivered: int
    worst: float | None
    target: str


def by_kind(recoveries_: list[Recovery]) -> list[KindSummary]:
    """One line per fault kind: how many, mails held, the slowest recovery."""
    groups: dict[FaultKind, list[Recovery]] = defaultdict(list)
    for recovery in recoveries_:
        groups[recovery.fault.kind].append(recovery)
    summaries = []
    for kind in FaultKind:
        group = groups.get(kind)
        if not group:
            continue
        seconds = [r.seconds for r in group if r.seconds is not None]
        summaries.append(
            KindSummary(
                kind=kind,
                faults=len(group),
                held=sum(r.held for r in group),
                never_delivered=sum(r.never_delivered for r in group),
                worst=max(seconds) if seconds else None,
                target=TARGETS.get(kind, "-"),
            )
        )
    return summaries
