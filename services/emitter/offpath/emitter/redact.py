"""What of a query's text leaves the serving process: privacy by default.

The text an RPC records (``EventRecord.query``) is turned into the text the
event carries (``AnalyticsEvent.query``) by a :class:`QueryTextPolicy`, in
the sender (the sender process, or the sender thread) when the record
becomes protobuf: never on the event loop, and always before the event is
sent or written to the spool. The modes (``OFFPATH_EMIT_QUERY_TEXT``):

- ``redact`` (the default): :func:`redact` masks e-mail addresses, phone
  numbers, card numbers, IBANs, IPv4 addresses and long digit runs (ID,
  account and social security numbers, one-time codes) with typed
  placeholders such as ``[email]``; the rest of the text is kept.
- ``keep``: the text as the client sent it.
- ``hash``: a keyed hash (HMAC-SHA256) of the normalised text, so equal
  queries still count together in the top queries without the text being
  stored; see :meth:`QueryTextPolicy.hash`.
- ``drop``: an empty text.

Redaction is best effort: patterns catch what has a shape (an address, a
number). Names, street addresses, free-text secrets ("my password is
hunter2") and numbers written as words are kept.

Whatever the mode, a rejected request's text is cut to a short prefix by
the service before it is recorded (:func:`rejected_prefix`), so an
over-long query is never carried whole.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from collections.abc import Callable
from typing import Final, Literal, NamedTuple, get_args

QueryTextMode = Literal["redact", "keep", "hash", "drop"]
QUERY_TEXT_MODES: Final[tuple[QueryTextMode, ...]] = get_args(QueryTextMode)

# Hex characters of the HMAC kept: 128 bits, far past any chance of two
# different queries sharing a digest, and short in the rollup items.
HASH_HEX_CHARS: Final = 32
HASH_PREFIX: Final = "hmac:"
# A shorter key could be guessed; 16 characters of a random hex or base64
# string are 64 bits and more.
MIN_HASH_KEY_CHARS: Final = 16

# How much of a rejected request's text is recorded.
REJECTED_QUERY_CHARS: Final = 64
TRUNCATED_MARK: Final = "…"

EMAIL: Final = "[email]"
PHONE: Final = "[phone]"
CARD: Final = "[card]"
IBAN: Final = "[iban]"
IP: Final = "[ip]"
NUMBER: Final = "[number]"

# Each pattern starts only where a token starts (a negative look-behind),
# and its groups of digits are split by required separators, so a scan
# stays linear in the text's length: a failed match is neither retried from
# every character of a long run nor re-split in every possible way.
_EMAIL = re.compile(
    r"(?<![\w.%+-])[\w.%+-]+@[\w-]+(?:\.[\w-]+)*\.[^\W\d_]{2,}(?![\w-])",
)
# Two letters, two check digits, then 11 to 30 letters and digits in groups
# of four, a space allowed between groups (the printed form).
_IBAN = re.compile(
    r"(?<!\w)[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?!\w)",
    re.IGNORECASE,
)
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\d)")
# 13 to 19 digits, a space or a dash allowed between any two.
_CARD = re.compile(r"(?<![\w+])\d(?:[ -]?\d){12,18}(?!\w)")
# How card numbers are printed: in fours (the last group shorter), or 4-6-5.
_CARD_GROUPS = re.compile(r"\d{4}(?:[ -]\d{4})*(?:[ -]\d{1,4})?|\d{4}[ -]\d{6}[ -]\d{4,5}")
# International: + and a country code, then groups split by spaces, dots,
# dashes or an area code in parentheses: +44 20 7946 0958, +1 (555) 123-4567,
# +33612345678.
_PHONE_INTL = re.compile(r"(?<![\w+])\+\d+(?:[ .-]?\(\d+\)[ .-]?\d+|[ .-]\d+){0,7}(?!\w)")
# National with a trunk 0 (or 00 for abroad): 020 7946 0958, (030) 1234567,
# 06 12 34 56 78, 0170-1234567, 030/1234567.
_PHONE_TRUNK = re.compile(
    r"(?<![\w.,/])(?:\(0\d{1,4}\) ?|0\d{1,4}[ ./-])\d{2,8}(?:[ ./-]\d{2,8}){0,4}(?!\w|[.,/]\d)"
)
# A date written day.month.year (or month/day/year) is not a phone number
# (06.12.34.56.78, where the groups go on, is).
_DATE_START = re.compile(r"\d{1,2}([./-])\d{1,2}\1(?:\d{4}|\d{2})(?!\d|\1\d)")
# North American: (555) 123-4567, 555-123-4567, 555.123.4567, 555 123 4567.
_PHONE_NANP = re.compile(r"(?<![\w.,])(?:\(\d{3}\) ?|\d{3}[ .-])\d{3}[ .-]\d{4}(?!\w|[.,]\d)")
# Social security numbers and other dash-grouped identifiers: 078-05-1120,
# 12-3456-7890 (an ISO date, 2024-01-15, is kept).
_GROUPED_ID = re.compile(r"(?<![\w.,])\d{1,6}(?:-\d{1,8}){2,}(?!\w|[.,]\d)")
_DATE = re.compile(r"\d{4}-\d{1,2}-\d{1,2}|\d{1,2}-\d{1,2}-\d{4}")
_SSN_SPACED = re.compile(r"(?<![\w.,])\d{3} \d{2} \d{4}(?!\w|[.,]\d)")
# Six digits or more in a row, wherever they are (inside a word too:
# ID12345678). Six catches one-time codes and bank sort codes; a plain
# large number (a salary, 100000 requests) is masked as well.
_DIGIT_RUN = re.compile(r"\d{6,}")
_SPACE = re.compile(r"\s+")
_HAS_DIGIT = re.compile(r"\d")


def _digits(text: str) -> str:
    return "".join(ch for ch in text if "0" <= ch <= "9")


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = ord(ch) - 48
        if i % 2:
            n *= 2
            if n > 9:
                n -= 9
        total += n
    return total % 10 == 0


def _iban_valid(compact: str) -> bool:
    """ISO 13616's check: the rearranged number, letters as 10-35, mod 97 is 1."""
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(number) % 97 == 1


def _email(match: re.Match[str]) -> str:
    return EMAIL


def _iban(match: re.Match[str]) -> str:
    text = match.group()
    compact = text.replace(" ", "").upper()
    # Checksum-valid, or digit-heavy enough to be an account number with a
    # typo in it; words in capitals (AB12 CDEF GHIJ) are left alone.
    if _iban_valid(compact) or len(_digits(compact)) >= 10:
        return IBAN
    return text


def _ipv4(match: re.Match[str]) -> str:
    text = match.group()
    if all(int(part) <= 255 for part in text.split(".")):
        return IP
    return text


def _card(match: re.Match[str]) -> str:
    text = match.group()
    if _luhn(_digits(text)):
        return CARD
    # A card number with a typo, or another account number printed like one;
    # digits spaced any other way (10 2024 ...) are left to the next patterns.
    return NUMBER if _CARD_GROUPS.fullmatch(text) else text


def _phone_intl(match: re.Match[str]) -> str:
    text = match.group()
    return PHONE if 7 <= len(_digits(text)) <= 15 else text


def _phone_trunk(match: re.Match[str]) -> str:
    text = match.group()
    if _DATE_START.match(text) or not 9 <= len(_digits(text)) <= 14:
        return text
    return PHONE


def _phone_nanp(match: re.Match[str]) -> str:
    return PHONE


def _grouped_id(match: re.Match[str]) -> str:
    text = match.group()
    if len(_digits(text)) < 7 or _DATE.fullmatch(text):
        return text
    return NUMBER


def _number(match: re.Match[str]) -> str:
    return NUMBER


class _Pass(NamedTuple):
    pattern: re.Pattern[str]
    replace: Callable[[re.Match[str]], str]
    # What any match needs, checked first with a C-speed count (most texts
    # skip most passes): so many digits in the text, and this character.
    min_digits: int
    needs: str = ""


# Order matters: the most specific shapes first; a placeholder has no digit,
# so a later pattern never matches inside an earlier one's mask.
_PASSES: Final = (
    _Pass(_IBAN, _iban, 6),
    _Pass(_IPV4, _ipv4, 4, "."),
    _Pass(_CARD, _card, 13),
    _Pass(_PHONE_INTL, _phone_intl, 7, "+"),
    _Pass(_PHONE_NANP, _phone_nanp, 10),
    _Pass(_GROUPED_ID, _grouped_id, 7, "-"),
    _Pass(_SSN_SPACED, _number, 9, " "),
    _Pass(_PHONE_TRUNK, _phone_trunk, 9, "0"),
    _Pass(_DIGIT_RUN, _number, 6),
)
_FEWEST_DIGITS: Final = min(p.min_digits for p in _PASSES)
_NO_DIGITS: Final = str.maketrans("", "", "0123456789")
# Where the number patterns can match: runs of words that hold a digit,
# with the four-letter groups an IBAN may have between them (GB82 WEST
# 1234 ...). Every match of every number pattern lies inside one such run
# and its look-arounds see whitespace or an end at either side, as they
# would in the whole text; so each pattern scans a few short runs, not the
# whole text, and a long query with a few numbers costs little more than a
# short one. Linear: a run starts only where a word starts, and a word's
# part before its first digit holds none, so nothing is tried twice.
_REGION = re.compile(r"(?<!\S)[^\s\d]*\d\S*(?:\s+(?:[^\s\d]*\d\S*|[A-Za-z]{4}(?!\S)))*")


def _redact_region(match: re.Match[str]) -> str:
    text = match.group()
    digits = len(text) - len(text.translate(_NO_DIGITS))
    if digits < _FEWEST_DIGITS:
        return text
    for rule in _PASSES:
        if digits >= rule.min_digits and (not rule.needs or rule.needs in text):
            text = rule.pattern.sub(rule.replace, text)
            digits = len(text) - len(text.translate(_NO_DIGITS))
    return text


class _AsciiSigns(dict[int, str]):
    """``str.translate``'s table from a character to the ASCII digit or sign
    it stands for: a digit of any script (Arabic-Indic, fullwidth), and a
    character whose compatibility form (NFKC) is one ASCII digit or sign
    the patterns use (a fullwidth ``@``, a no-break space); a dash of any
    kind becomes ``-``. Letters and everything else stay as they are (an
    ellipsis too). Filled as characters are met; bounded."""

    _SIGNS: Final = frozenset("0123456789@+-.()/ ")
    _MAX: Final = 4096

    def __missing__(self, code: int) -> str:
        char = chr(code)
        if char.isdecimal():
            value = str(unicodedata.decimal(char))
        elif unicodedata.category(char) == "Pd":
            value = "-"
        else:
            form = unicodedata.normalize("NFKC", char)
            value = form if form in self._SIGNS else char
        if len(self) < self._MAX:
            self[code] = value
        return value


_ASCII_SIGNS: Final = _AsciiSigns()


def redact(text: str) -> str:
    """``text`` with e-mail addresses, phone, card, IBAN and other long
    numbers, and IPv4 addresses replaced by typed placeholders (``[email]``,
    ``[phone]``, ``[card]``, ``[iban]``, ``[ip]``, ``[number]``). In a
    text that is not all ASCII, digits and signs are matched in their ASCII
    forms (see :class:`_AsciiSigns`); when something in it is masked, the
    rest comes back with those forms too. Best effort; see the module
    docstring for what it does not catch."""
    if text.isascii():
        return _redact_ascii(text)
    forms = text.translate(_ASCII_SIGNS)
    redacted = _redact_ascii(forms)
    return text if redacted == forms else redacted


def _redact_ascii(text: str) -> str:
    if "@" in text:
        text = _EMAIL.sub(_email, text)
    digits = len(text) - len(text.translate(_NO_DIGITS))
    if digits < _FEWEST_DIGITS:
        return text  # most queries: too few digits for any number to mask
    return _REGION.sub(_redact_region, text)


def normalise(text: str) -> str:
    """The form a text is hashed in: NFKC, case-folded, whitespace collapsed
    (as the rollups count queries), so "Kubernetes " and "kubernetes" share
    a digest."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip().casefold()


def rejected_prefix(text: str, limit: int = REJECTED_QUERY_CHARS) -> str:
    """At most ``limit`` characters of a rejected request's text, plus a mark
    when cut. Cheap enough for the request path (slicing a few dozen
    characters). A word cut in two that holds a digit or an ``@`` (half an
    e-mail address, the first digits of a card number) could slip past
    :func:`redact`, so it is left out."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    if not text[limit].isspace():
        words = head.rsplit(None, 1)
        last = words[-1]
        if "@" in last or _HAS_DIGIT.search(last):
            head = words[0] if len(words) == 2 else ""
    return head.rstrip() + TRUNCATED_MARK


class QueryTextPolicy:
    """Turns a recorded query text into the text the event carries, by mode
    (see the module docstring). Called in the sender; immutable, so one
    object is shared by every record."""

    __slots__ = ("_apply", "_key", "mode")

    def __init__(self, mode: QueryTextMode = "redact", hash_key: bytes | None = None) -> None:
        if mode not in QUERY_TEXT_MODES:
            raise ValueError(f"query text mode {mode!r} is not one of {QUERY_TEXT_MODES}")
        if mode == "hash" and not hash_key:
            raise ValueError("query text mode 'hash' needs a key")
        self.mode: QueryTextMode = mode
        self._key = hash_key if mode == "hash" else None
        appliers: dict[str, Callable[[str], str]] = {
            "redact": redact,
            "keep": _keep,
            "hash": self.hash,
            "drop": _drop,
        }
        self._apply = appliers[mode]

    def __call__(self, text: str) -> str:
        return self._apply(text) if text else text

    def hash(self, text: str) -> str:
        """``hmac:`` and the first 32 hex characters (128 bits) of
        HMAC-SHA256 of the normalised text under the key: equal queries get
        equal digests, and without the key a digest cannot be matched to a
        guessed text."""
        assert self._key is not None
        digest = hmac.new(self._key, normalise(text).encode(), hashlib.sha256).hexdigest()
        return HASH_PREFIX + digest[:HASH_HEX_CHARS]

    def __repr__(self) -> str:  # never the key
        return f"QueryTextPolicy(mode={self.mode!r})"


def _keep(text: str) -> str:
    return text


def _drop(text: str) -> str:
    return ""


REDACT: Final = QueryTextPolicy("redact")
