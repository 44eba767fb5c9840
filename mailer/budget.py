"""The relay's sending budget, shared by every worker process and thread.

Three things live in the broker's Redis, each changed by one Lua script so
that no two workers ever read-modify-write it apart:

- the open SMTP connections: a counting semaphore, one sorted-set member per
  connection whose score is when its hold expires. The pool renews its
  holds every second, so a killed worker's slots free themselves within
  SLOT_TTL;
- the sending rate: a GCRA token bucket (a theoretical arrival time), when a
  rate is in force, and the line of mails waiting for a turn under it. A
  mail's place is its outbox id, so turns go roughly in the order mails were
  written, whichever mail asks first: a mail that waited keeps its place
  ahead of newer arrivals instead of drawing lots with them;
- the limits learned from the relay, below MAILER_RELAY_MAX_CONNECTIONS and
  MAILER_RELAY_RATE: a throttle reply cuts them (multiplicative decrease),
  a run of accepted mails raises them again (additive increase), like
  Postfix's per-destination feedback. They expire LEARNED_TTL after the last
  cut, so a limit learned on a bad afternoon does not stay forever.

While the relay has refused nothing for a while (no learned limit, no
throttle reply within THROTTLING_QUIET) and MAILER_RELAY_RATE is unset, a
send asks Redis nothing: the pool's reaper renews its slots every second
(mailer.pool.REAP_EVERY), and that renewal says whether it is still so and
carries the mails this process accepted since, for the observed rate a
later cut reads. That saves two script calls per mail, a tenth of a
worker's CPU per mail (bench/fig_stages.py's budget stage). Once a limit is
learned or a throttle reply comes, each process learns it within QUIET_FOR
and its sends ask the budget again.

Redis is the broker too, so when it is down few mails move anyway. Each call
then answers "no budget" at once (`None`) and the budget is not asked again
for UNAVAILABLE_FOR seconds: the pool falls back to MAILER_RELAY_MAX_CONNECTIONS
per process and no rate, the send path neither stalls nor fails.
"""

import logging
import math
import threading
import time
from dataclasses import dataclass

import redis
from django.conf import settings

logger = logging.getLogger(__name__)

PREFIX = "mailer:relay:"
SLOTS_KEY = PREFIX + "slots"
OPEN_KEY = PREFIX + "open"  # the slots whose connection the relay greeted
LIMITS_KEY = PREFIX + "limits"
TAT_KEY = PREFIX + "tat"
SENT_KEY = PREFIX + "sent"
THROTTLING_KEY = PREFIX + "throttling"
LINE_KEY = PREFIX + "line"  # mails waiting for a turn under the rate, by place
LINE_SEEN_KEY = PREFIX + "line:seen"  # when each place is dropped unless asked
WANTED_KEY = PREFIX + "wanted"  # set while a slot was asked for and none was free

SLOT_TTL = 5.0  # seconds a connection's hold lasts without renewal: 5 reaper rounds
LEARNED_TTL = 600  # seconds a learned limit outlives the last throttle reply
THROTTLING_QUIET = 60  # seconds without a throttle reply that end an episode
OBSERVED_WINDOW = 10  # seconds of accepted mails the observed rate looks at
# Seconds between two cuts of the rate, however many replies say so: longer
# than the turns already reserved at the old rate (attempts.BUDGET_WAIT), which
# still go out and meet the relay's refusals; cutting on those undershoots.
CUT_EVERY = 3.0
MIN_RATE = 0.1  # mails per second: a learned rate never goes below this
# Seconds a mail keeps its place in line without asking again: longer than
# the longest countdown it is sent back with (attempts.THROTTLE_COUNTDOWN_MAX),
# with room for a busy worker; a dead task's place then frees itself.
LINE_HOLD = 20.0
# Seconds a refused slot request stays a want that other processes' idle
# connections yield to: longer than a reaper round (mailer.pool.REAP_EVERY).
WANTED_FOR = 1.5
# Seconds a renewal's "nothing learned, no throttling" holds in this process:
# longer than a reaper round (mailer.pool.REAP_EVERY), so it never lapses
# between two renewals of a working pool.
QUIET_FOR = 1.5
SOCKET_TIMEOUT = 0.5  # seconds: a frozen Redis must not stall a send
UNAVAILABLE_FOR = 5.0  # seconds the budget is not asked after Redis failed

# KEYS: slots, limits, wanted. ARGV: holder, ceiling, ttl_ms, wanted_ms.
# -> {granted (0/1), connections open, allowed concurrency}; a refusal
# leaves a want that idle connections elsewhere yield to.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local limit = tonumber(ARGV[2])
local learned = tonumber(redis.call('HGET', KEYS[2], 'concurrency'))
if learned and learned < limit then limit = learned end
local count = redis.call('ZCARD', KEYS[1])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
  return {1, count, limit}
end
if count < limit then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ttl)
  return {1, count + 1, limit}
end
redis.call('SET', KEYS[3], '1', 'PX', tonumber(ARGV[4]))
return {0, count, limit}
"""

# KEYS: slots, limits, open, line, wanted, sent, throttling. ARGV: ceiling,
# ttl_ms, mails accepted since the caller's last renewal, holder... (the
# caller's open connections)
# -> {connections open, allowed concurrency, learned rate or '', mails in line,
#     a slot wanted (0/1), quiet (0/1): no learned limit, no throttle episode}
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
-- The caller's connections are open: back in both sets if Redis lost them.
for i = 4, #ARGV do
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[i])
  redis.call('ZADD', KEYS[3], now + ttl, ARGV[i])
end
if #ARGV > 3 then
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[3], ttl)
end
-- The caller's accepted mails, counted in this second as _ACCEPTED counts.
local accepted = tonumber(ARGV[3])
if accepted > 0 then
  local second = tonumber(t[1])
  redis.call('HINCRBY', KEYS[6], second, accepted)
  redis.call('EXPIRE', KEYS[6], 90)
  for s = second - 70, second - 61 do redis.call('HDEL', KEYS[6], s) end
end
local limit = tonumber(ARGV[1])
local learned = tonumber(redis.call('HGET', KEYS[2], 'concurrency'))
if learned and learned < limit then limit = learned end
local rate = redis.call('HGET', KEYS[2], 'rate') or ''
local quiet = 0
if redis.call('EXISTS', KEYS[2]) == 0 and redis.call('EXISTS', KEYS[7]) == 0 then
  quiet = 1
end
return {redis.call('ZCARD', KEYS[3]), limit, rate, redis.call('ZCARD', KEYS[4]),
  redis.call('EXISTS', KEYS[5]), quiet}
"""

# KEYS: slots, open. ARGV: holder, ttl_ms.
_MARK_OPEN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[2]))
return 1
"""

# KEYS: open. -> connections the relay greeted, open now.
_COUNT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
"""

# KEYS: tat, limits, line, seen. ARGV: ceiling rate (0: none), max wait in
# ms, place ('' for none), hold ms.
# -> {reserved (1) or not (0), wait in ms}: with a place, the wait of a mail
# not reserved is until its own turn, after the places ahead of it in line;
# a reservation needs no wait if no rate is in force.
_RESERVE = """
local rate = tonumber(ARGV[1])
local learned = tonumber(redis.call('HGET', KEYS[2], 'rate'))
if learned and (rate <= 0 or learned < rate) then rate = learned end
local place = ARGV[3]
if rate <= 0 then
  if place ~= '' then
    redis.call('ZREM', KEYS[3], place)
    redis.call('ZREM', KEYS[4], place)
  end
  return {1, 0}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat or tat < now then tat = now end
local wait = tat - now
local interval = 1000 / rate
local max_wait = tonumber(ARGV[2])
local ahead = 0
if place ~= '' then
  -- Places whose mail stopped asking (its task died, or went elsewhere) go.
  local gone = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now)
  for i = 1, #gone, 500 do
    redis.call('ZREM', KEYS[3], unpack(gone, i, math.min(i + 499, #gone)))
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
  redis.call('ZADD', KEYS[3], tonumber(place), place)
  ahead = redis.call('ZRANK', KEYS[3], place)
end
local turn = wait + ahead * interval
if turn > max_wait then
  if place ~= '' then
    local hold = tonumber(ARGV[4])
    redis.call('ZADD', KEYS[4], now + hold, place)
    redis.call('PEXPIRE', KEYS[3], hold)
    redis.call('PEXPIRE', KEYS[4], hold)
  end
  return {0, math.ceil(turn)}
end
if place ~= '' then
  redis.call('ZREM', KEYS[3], place)
  redis.call('ZREM', KEYS[4], place)
end
local keep = math.ceil(wait + interval) + 1000
redis.call('SET', KEYS[1], tostring(tat + interval), 'PX', keep)
return {1, math.ceil(wait)}
"""

# KEYS: limits, sent. ARGV: ceiling connections, ceiling rate (0: none).
# -> {changed (0/1), learned concurrency or '', learned rate or ''}
_ACCEPTED = """
local t = redis.call('TIME')
local second = tonumber(t[1])
redis.call('HINCRBY', KEYS[2], second, 1)
redis.call('EXPIRE', KEYS[2], 90)
for s = second - 70, second - 61 do redis.call('HDEL', KEYS[2], s) end
local c = tonumber(redis.call('HGET', KEYS[1], 'concurrency'))
local r = tonumber(redis.call('HGET', KEYS[1], 'rate'))
if not c and not r then return {0, '', ''} end
local changed = 0
-- One more connection after a run of as many mails as connections (at
-- least 10); after a second's worth of mails (at least 5), a tenth more
-- rate (at least 0.1/s), or half the way back to 0.9 of the rate the relay
-- last refused if that is more, as Postfix's positive feedback: a cut that
-- went too deep costs a few runs, not minutes. The next cut goes to what the
-- relay accepted, so an overshoot costs one refused mail, not pace.
if c then
  local run = redis.call('HINCRBY', KEYS[1], 'run', 1)
  if run >= math.max(10, c) then
    changed = 1
    c = c + 1
    if c >= tonumber(ARGV[1]) then
      redis.call('HDEL', KEYS[1], 'concurrency', 'run')
      c = nil
    else
      redis.call('HSET', KEYS[1], 'concurrency', c, 'run', 0)
    end
  end
end
if r then
  local run = redis.call('HINCRBY', KEYS[1], 'run_rate', 1)
  if run >= math.max(5, math.ceil(r)) then
    changed = 1
    local step = math.max(0.1, r / 10)
    local refused = tonumber(redis.call('HGET', KEYS[1], 'refused_rate'))
    if refused and r < refused * 0.9 then
      step = math.max(step, (refused * 0.9 - r) / 2)
    end
    r = r + step
    local ceiling = tonumber(ARGV[2])
    if ceiling > 0 and r >= ceiling then
      redis.call('HDEL', KEYS[1], 'rate', 'run_rate', 'refused_rate')
      r = nil
    else
      redis.call('HSET', KEYS[1], 'rate', tostring(r), 'run_rate', 0)
    end
  end
end
if changed == 0 then return {0, tostring(c or ''), tostring(r or '')} end
return {1, tostring(c or ''), tostring(r or '')}
"""

# KEYS: limits, sent, throttling. ARGV: limit ('connections' or 'rate'),
# connections of ours still open, ceiling connections, ceiling rate (0: none),
# min rate, learned ttl s, quiet s, cut every ms.
# -> {changed (0/1), episode started (0/1), learned concurrency or '',
#     learned rate or ''}
_THROTTLED = """
local t = redis.call('TIME')
local second = tonumber(t[1])
local now = second * 1000 + math.floor(tonumber(t[2]) / 1000)
local started = redis.call('SET', KEYS[3], now, 'NX', 'EX', ARGV[7]) and 1 or 0
if started == 0 then redis.call('EXPIRE', KEYS[3], ARGV[7]) end
local changed = 0
if ARGV[1] == 'connections' then
  -- An observation, not a multiplier: every reply may lower it further.
  local current = tonumber(redis.call('HGET', KEYS[1], 'concurrency'))
    or tonumber(ARGV[3])
  local new = math.max(1, tonumber(ARGV[2]))
  if new < current then
    redis.call('HSET', KEYS[1], 'concurrency', new, 'run', 0)
    changed = 1
  end
else
  local current = tonumber(redis.call('HGET', KEYS[1], 'rate'))
  local ceiling = tonumber(ARGV[4])
  if not current and ceiling > 0 then current = ceiling end
  local accepted, oldest = 0, nil
  for s = second - 9, second do
    local n = tonumber(redis.call('HGET', KEYS[2], s))
    if n and n > 0 then
      accepted = accepted + n
      if not oldest then oldest = s end
    end
  end
  -- Once per CUT_EVERY, however many replies say so: the rest of a relay's
  -- window refuses everything, and the rate looks lower each time.
  local last = tonumber(redis.call('HGET', KEYS[1], 'cut_rate'))
  local recent = last and now - last < tonumber(ARGV[8])
  local new
  if not current and not last then
    -- The first reply of an episode: watch what the relay accepts for one
    -- CUT_EVERY instead of guessing a rate from the second or two so far
    -- (a burst's first 250s came before any pacing, from every thread).
    redis.call('HSET', KEYS[1], 'cut_rate', now)
    recent = true
    new = 1
  elseif accepted > 0 then
    new = accepted / math.max(1, now / 1000 - oldest)
    -- What the relay took is at most what it allows, and reads low when we
    -- sent less than we could (a window not full, a busy worker). Near the
    -- rate in force, cut by a tenth to a fifth; far below it, halve: a
    -- relay that really allows that little refuses again within CUT_EVERY.
    if current and new >= current * 0.5 then
      new = math.min(math.max(new, current * 0.8), current * 0.9)
    elseif current then
      new = current * 0.5
    end
  elseif current then
    new = current / 2
  else
    new = 1
  end
  new = math.max(tonumber(ARGV[5]), new)
  if (not current or new < current) and not recent then
    redis.call('HSET', KEYS[1], 'rate', tostring(new), 'cut_rate', now, 'run_rate', 0)
    -- The rate the relay refused: the climb back aims just below it.
    if current then
      redis.call('HSET', KEYS[1], 'refused_rate', tostring(current))
    else
      redis.call('HDEL', KEYS[1], 'refused_rate')
    end
    changed = 1
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('EXPIRE', KEYS[1], ARGV[6]) end
local c = redis.call('HGET', KEYS[1], 'concurrency') or ''
local r = redis.call('HGET', KEYS[1], 'rate') or ''
return {changed, started, c, r}
"""


@dataclass(frozen=True)
class Limits:
    """What the budget allows now: connections, and mails per second (None: any)."""

    concurrency: int
    rate: float | None


@dataclass(frozen=True)
class Turn:
    """A send's place under the rate: reserved or not, and seconds until it."""

    reserved: bool
    wait: float


@dataclass(frozen=True)
class Change:
    """What a throttle reply or a run of accepted mails did to the limits."""

    limits: Limits
    changed: bool
    started: bool = False  # the first throttle reply of an episode


def max_connections() -> int:
    """MAILER_RELAY_MAX_CONNECTIONS, parsed; raises ValueError when nonsense."""
    value = settings.MAILER_RELAY_MAX_CONNECTIONS
    number = int(str(value).strip())
    if number < 1:
        raise ValueError(f"{value!r} is below 1")
    return number


def fixed_rate() -> float | None:
    """MAILER_RELAY_RATE in mails per second, None if unset; ValueError if nonsense."""
    value = settings.MAILER_RELAY_RATE
    if value is None or str(value).strip() == "":
        return None
    number = float(str(value).strip())
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"{value!r} is not a positive number")
    return number


def acquire_slot(*, holder: str) -> bool | None:
    """Take one connection slot for `holder`; None when the budget is unreachable."""
    reply = _run(
        _ACQUIRE,
        [SLOTS_KEY, LIMITS_KEY, WANTED_KEY],
        holder,
        max_connections(),
        _ttl(),
        int(WANTED_FOR * 1000),
    )
    if reply is None:
        return None
    granted, open_now, allowed = reply
    _seen.update(open_now=int(open_now), concurrency=int(allowed))
    return bool(granted)


@dataclass(frozen=True)
class Budget:
    """The shared budget as one renewal saw it."""

    open_now: int  # connections of ours the relay greeted, across every worker
    limits: Limits
    waiting: int  # mails holding a place in line for a rate turn
    wanted: bool = False  # a slot was refused within WANTED_FOR: idle ones yield


def renew_slots(*, holders: list[str]) -> Budget | None:
    """Renew the holds of `holders`; return what the budget looks like now.

    Also counts the mails this process accepted while quiet, and says
    whether it still is (see the module's docstring).
    """
    keys = [SLOTS_KEY, LIMITS_KEY, OPEN_KEY, LINE_KEY, WANTED_KEY]
    keys += [SENT_KEY, THROTTLING_KEY]
    accepted = _quiet.take_accepted()
    reply = _run(_RENEW, keys, max_connections(), _ttl(), accepted, *holders)
    if reply is None:
        _quiet.give_back(accepted)
        return None
    open_now, allowed, rate, waiting, wanted, quiet = reply
    _quiet.renewed(quiet=bool(quiet))
    limits = Limits(int(allowed), _ceiling_rate(_float(rate)))
    _seen.update(open_now=int(open_now), concurrency=limits.concurrency)
    return Budget(int(open_now), limits, int(waiting), bool(wanted))


def mark_open(*, holder: str) -> None:
    """Count `holder`'s connection as open: the relay greeted it."""
    _run(_MARK_OPEN, [SLOTS_KEY, OPEN_KEY], holder, _ttl())


def release_slot(*, holder: str) -> None:
    """Give a connection's slot back (the connection is closed or going)."""

    def release(client) -> None:
        with client.pipeline(transaction=True) as pipe:
            pipe.zrem(SLOTS_KEY, holder).zrem(OPEN_KEY, holder).execute()

    _call(release)


def open_connections() -> int | None:
    """Connections the relay greeted, open now across every worker; None if unknown.

    Slots taken for connections still being opened do not count: a 421 to
    several of ours at once is not "others still send".
    """
    reply = _run(_COUNT, [OPEN_KEY])
    return None if reply is None else int(reply)


def reserve_send(*, max_wait: float, place: int | None = None) -> Turn:
    """Reserve the next send under the rate: when it may go.

    Reserved with a wait of at most `max_wait` seconds; else nothing is
    reserved and `wait` says how far away the next turn is. With a `place`
    (the mail's outbox id) the mail queues in the shared line: it is
    reserved only if its own turn, after every lower place still waiting,
    is within `max_wait`, and `wait` says when that turn is. Reserved at
    once when no rate is in force or the budget is unreachable; without
    asking Redis while quiet and no fixed rate is set.
    """
    ceiling = fixed_rate() or 0
    if not ceiling and _quiet.now():
        return Turn(reserved=True, wait=0.0)
    reply = _run(
        _RESERVE,
        [TAT_KEY, LIMITS_KEY, LINE_KEY, LINE_SEEN_KEY],
        ceiling,
        int(max_wait * 1000),
        "" if place is None else str(int(place)),
        int(LINE_HOLD * 1000),
    )
    if reply is None:
        return Turn(reserved=True, wait=0.0)
    reserved, wait_ms = reply
    return Turn(reserved=bool(reserved), wait=int(wait_ms) / 1000)


def note_accepted() -> Change | None:
    """Count a mail the relay accepted; after a run of them, raise learned limits.

    While quiet, the count waits for the next renewal: nothing learned to raise.
    """
    if _quiet.now():
        _quiet.accept()
        return None
    ceiling = fixed_rate() or 0
    reply = _run(_ACCEPTED, [LIMITS_KEY, SENT_KEY], max_connections(), ceiling)
    if reply is None:
        return None
    changed, concurrency, rate = reply
    return Change(_limits(concurrency, rate), bool(changed))


def note_throttled(*, limit: str, others_open: int) -> Change | None:
    """Cut the learned limit a throttle reply was about: "connections" or "rate".

    Connections go down to the ones of ours that were still open (at least
    one). The rate, at most once per CUT_EVERY however many replies arrive,
    goes by what the relay accepted over the last OBSERVED_WINDOW seconds:
    with no rate in force, to that; near the rate in force, to 0.8-0.9 of
    it; far below it, to half of it (a reading that low may be ours, not
    the relay's). The refused rate is kept: the climb back aims below it.
    This process stops being quiet at once; the others at their next renewal.
    """
    _quiet.renewed(quiet=False)
    reply = _run(
        _THROTTLED,
        [LIMITS_KEY, SENT_KEY, THROTTLING_KEY],
        "connections" if limit == "connections" else "rate",
        max(0, others_open),
        max_connections(),
        fixed_rate() or 0,
        MIN_RATE,
        LEARNED_TTL,
        THROTTLING_QUIET,
        int(CUT_EVERY * 1000),
    )
    if reply is None:
        return None
    changed, started, concurrency, rate = reply
    return Change(_limits(concurrency, rate), bool(changed), bool(started))


def current_limits() -> Limits:
    """The limits in force; the ceilings when the budget is unreachable."""
    reply = _call(lambda client: client.hmget(LIMITS_KEY, "concurrency", "rate"))
    if reply is None:
        return Limits(max_connections(), fixed_rate())
    return _limits(*reply)


def last_seen() -> tuple[int, int]:
    """Connections open and allowed concurrency, as this process last saw them."""
    return _seen.open_now, _seen.concurrency


def forget() -> None:
    """Drop every shared budget key and this process's view of them (tests)."""
    _call(lambda client: client.delete(SLOTS_KEY, OPEN_KEY, LIMITS_KEY, TAT_KEY))
    _call(lambda client: client.delete(SENT_KEY))
    _call(
        lambda client: client.delete(
            THROTTLING_KEY, LINE_KEY, LINE_SEEN_KEY, WANTED_KEY
        )
    )
    _state.reset()
    _quiet.reset()
    _seen.update(open_now=0, concurrency=0)


class _Seen:
    """The last figures a script returned: for gauges and over-limit checks."""

    open_now = 0
    concurrency = 0

    def update(self, *, open_now: int, concurrency: int) -> None:
        self.open_now, self.concurrency = open_now, concurrency


_seen = _Seen()


class _Quiet:
    """Until when this process's last renewal found nothing learned and no
    throttling, and the accepted mails to count at the next one."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.until = -math.inf
        self.accepted = 0

    def now(self) -> bool:
        return time.monotonic() < self.until

    def renewed(self, *, quiet: bool) -> None:
        self.until = time.monotonic() + QUIET_FOR if quiet else -math.inf

    def accept(self) -> None:
        with self.lock:
            self.accepted += 1

    def take_accepted(self) -> int:
        with self.lock:
            taken, self.accepted = self.accepted, 0
        return taken

    def give_back(self, count: int) -> None:
        with self.lock:
            self.accepted += count


_quiet = _Quiet()


class _State:
    """This process's Redis client and when it may ask Redis again."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.client: redis.Redis | None = None
        self.url = ""
        self.scripts: dict[str, object] = {}
        self.retry_at = 0.0
        self.warned_at = getattr(self, "warned_at", -math.inf)


_state = _State()


def _client() -> redis.Redis:
    url = settings.REDIS_URL
    with _state.lock:
        if _state.client is None or _state.url != url:
            _state.client = _build_client(url)
            _state.url = url
            _state.scripts = {}
        return _state.client


def _build_client(url: str) -> redis.Redis:
    options = {
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": SOCKET_TIMEOUT,
        "retry_on_timeout": False,
        "health_check_interval": 30,
    }
    if url.startswith("sentinel://"):
        from celery import current_app

        connection = current_app.connection_for_write(
            transport_options={
                "socket_timeout": SOCKET_TIMEOUT,
                "socket_connect_timeout": SOCKET_TIMEOUT,
            }
        )
        return connection.default_channel.client
    if url.startswith("rediss://"):
        options["ssl_cert_reqs"] = "required"
        if settings.REDIS_SSL_CA_CERTS:
            options["ssl_ca_certs"] = settings.REDIS_SSL_CA_CERTS
    return redis.Redis.from_url(url, **options)


def _run(script: str, keys: list[str], *args):
    def run(client):
        registered = _state.scripts.get(script)
        if registered is None:
            registered = _state.scripts[script] = client.register_script(script)
        return registered(keys=keys, args=args, client=client)

    return _call(run)


def _call(operation):
    """Run one Redis operation; None, and a rest for Redis, when it fails."""
    if time.monotonic() < _state.retry_at:
        return None
    try:
        return operation(_client())
    except (redis.RedisError, OSError) as error:
        now = time.monotonic()
        first = now - _state.warned_at > 60
        _state.retry_at = now + UNAVAILABLE_FOR
        if first:
            _state.warned_at = now
        (logger.warning if first else logger.info)(
            "relay budget unavailable (%r): no shared limits for %.0f s",
            error,
            UNAVAILABLE_FOR,
        )
        return None


def _ttl() -> int:
    return int(SLOT_TTL * 1000)


def _float(value) -> float | None:
    if value in (None, b"", ""):
        return None
    return float(value)


def _ceiling_rate(learned: float | None) -> float | None:
    ceiling = fixed_rate()
    if learned is None:
        return ceiling
    return learned if ceiling is None else min(learned, ceiling)


def _limits(concurrency, rate) -> Limits:
    ceiling = max_connections()
    learned = int(_float(concurrency)) if _float(concurrency) else None
    return Limits(
        min(learned, ceiling) if learned else ceiling,
        _ceiling_rate(_float(rate)),
    )
