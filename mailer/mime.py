"""The mail's bytes, cheaper: the same bytes without the per-message searches.

The profile of a draining worker put a quarter of its time in `as_bytes`:
`email.generator` compiling a regex for each message to pick a boundary no
body line matches, and the policy folding every header, the dozen fixed ones
(Subject, From, MIME-Version, the parts' Content-Type and
Content-Transfer-Encoding) anew for each mail, and on Django 6.1 parsing each
as it is set. Here the multipart gets a random boundary up front and each
fixed header is parsed and folded once per process.
Both run on Django 5.2 (compat32 MIME classes) and 6.1 (email.policy).
"""

import random
import sys
from email.policy import Compat32, EmailPolicy

from django.core.mail import EmailMultiAlternatives

# Headers whose value is the same in many mails: folding them is worth a key.
FIXED_HEADERS = frozenset(
    {"subject", "from", "mime-version", "content-type", "content-transfer-encoding"}
)
_FOLDED: dict[tuple, tuple[object, str]] = {}
_FOLDED_MAX = 512  # kinds x languages x parts, with room to spare

# The stdlib's own shape (email.generator.Generator._make_boundary).
_BOUNDARY_WIDTH = len(repr(sys.maxsize - 1))


class _FoldOnce:
    """Policy mixin: fold a fixed header's value once, then reuse the text."""

    def _fold(self, name, value, *args, **kwargs):
        memo = None
        if name.lower() in FIXED_HEADERS and "boundary=" not in str(value):
            memo = self._memo(name, value)
        if memo is None:
            return super()._fold(name, value, *args, **kwargs)
        pin, key = memo
        key += (args, tuple(kwargs.items()), self.linesep, self.max_line_length)
        key += (self.cte_type, getattr(self, "utf8", None))
        entry = _FOLDED.get(key)
        if entry is None:
            entry = pin, super()._fold(name, value, *args, **kwargs)
            if len(_FOLDED) < _FOLDED_MAX:
                _FOLDED[key] = entry
        return entry[1]


class _FoldOnceCompat32(_FoldOnce, Compat32):
    """Django 5.2's policy (compat32), folding fixed headers once."""

    def _memo(self, name, value):
        # compat32 folds a plain string by its text alone.
        return (None, (name, value)) if type(value) is str else None


class _FoldOnceEmailPolicy(_FoldOnce, EmailPolicy):
    """Django 6.1's policy (email.policy.SMTP and kin), folding fixed headers once."""

    def _memo(self, name, value):
        # A header object folds by the source it was parsed from, which its
        # text does not always show: key on the object itself (_ParseOnce
        # hands every mail the same one), pinned so its id is never reused.
        return (value, (name, id(value))) if hasattr(value, "fold") else None


class _ParseOnce:
    """Header factory: parse a fixed header once (header objects are immutable).

    It also keeps the header class it makes for each name: the stdlib's
    registry builds a new class on every lookup, twice per header set.
    """

    def __init__(self, registry) -> None:
        self.registry = registry
        self.parsed: dict[tuple[str, str], object] = {}
        self.classes: dict[str, type] = {}

    def __call__(self, name, value):
        fixed = name.lower() in FIXED_HEADERS and isinstance(value, str)
        if not fixed or "boundary=" in value:
            return self[name](name, value)
        header = self.parsed.get((name, value))
        if header is None:
            header = self[name](name, value)
            if len(self.parsed) < _FOLDED_MAX:
                self.parsed[name, value] = header
        return header

    def __getitem__(self, name):
        key = name.lower()
        kind = self.classes.get(key)
        if kind is None:
            kind = self.registry[name]
            if len(self.classes) < _FOLDED_MAX:
                self.classes[key] = kind
        return kind

    def map_to_type(self, name, cls):
        self.registry.map_to_type(name, cls)
        self.classes.clear()
        self.parsed.clear()

    def __getattr__(self, name):
        return getattr(self.registry, name)


_POLICIES: dict = {}


def fold_once(policy):
    """Return `policy` with the same settings, folding fixed headers once."""
    if isinstance(policy, _FoldOnce):
        return policy
    cheaper = _POLICIES.get(policy)
    if cheaper is None:
        kind = _FoldOnceEmailPolicy if isinstance(policy, EmailPolicy) else None
        if kind is None and isinstance(policy, Compat32):
            kind = _FoldOnceCompat32
        if kind is None:
            return policy
        settings = vars(policy)
        if kind is _FoldOnceEmailPolicy:
            factory = _ParseOnce(policy.header_factory)
            settings = {**settings, "header_factory": factory}
        cheaper = kind(**settings)
        if len(_POLICIES) < 16:
            _POLICIES[policy] = cheaper
    return cheaper


class PreparedMail(EmailMultiAlternatives):
    """An EmailMultiAlternatives whose MIME tree writes out without searching."""

    def message(self, **kwargs):
        if "policy" in kwargs:  # Django 6.1: the headers are parsed as they are set
            kwargs["policy"] = fold_once(kwargs["policy"])
        msg = super().message(**kwargs)
        if msg.is_multipart():
            boundary = new_boundary()
            # The generator would search every line for it: a random one of
            # 63 bits is checked against the bodies as plain text instead.
            bodies = [self.body, *(a.content for a in self.alternatives)]
            if not any(boundary in str(body) for body in bodies):
                msg.set_boundary(boundary)
        msg.policy = fold_once(msg.policy)
        return msg


def new_boundary() -> str:
    """Return a random MIME boundary of the stdlib's shape."""
    token = random.randrange(sys.maxsize)
    return f"{'=' * 15}{token:0{_BOUNDARY_WIDTH}d}=="
