"""No credential in the repository: every git-tracked file is scanned for
credential patterns (cloud and token formats, private keys, high-entropy
values assigned to secret-like names), and no key or credentials file is
tracked.

A finding fails the test with the file, line and rule, never the value. A
dummy that trips a rule only goes into ALLOWED, by exact value with a reason.
The self-tests build their samples at run time, so no sample sits in a
tracked file.
"""

from __future__ import annotations

import itertools
import math
import re
import secrets
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]

# Characters of a token, an API key or a base64 secret (not spaces, quotes,
# ':' or braces, so ARNs, URLs with a scheme and f-string templates do not
# read as one).
_TOKEN = r"[A-Za-z0-9+/=_\-.~]"

# A name that says it holds a secret (api_key, READ_TOKENS, client_secret, ...).
_SECRET_NAME = (
    r"(?i)(?:secret|token|passw(?:or)?d|passwd|api_?key|access_?key|private_?key|"
    r"credential|auth)s?[\w.\-]*"
)

# (rule, pattern, whether the captured value must also look random). No
# pattern spans a line.
RULES: list[tuple[str, re.Pattern[str], bool]] = [
    (
        "AWS access key id",
        re.compile(r"(?<![A-Za-z0-9])((?:AKIA|ASIA)[A-Z0-9]{16})(?![A-Za-z0-9])"),
        False,
    ),
    (
        "AWS secret access key",
        re.compile(
            r"(?i)aws_?secret_?(?:access_?)?key[\"']?\s*(?:=|:|=>)\s*[\"']?"
            r"([A-Za-z0-9/+=]{40})(?![A-Za-z0-9/+=])"
        ),
        False,
    ),
    (
        "private key",
        re.compile(r"(-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----)"),
        False,
    ),
    ("GitHub token", re.compile(r"\b((?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36,})"), False),
    ("GitHub token", re.compile(r"\b(github_pat_[A-Za-z0-9_]{22,})"), False),
    ("Slack token", re.compile(r"\b(xox[abposr]-[A-Za-z0-9-]{10,})"), False),
    (
        "Slack webhook",
        re.compile(r"(hooks\.slack\.com/services/T[A-Z0-9]+/B[A-Z0-9]+/[A-Za-z0-9]+)"),
        False,
    ),
    ("Google API key", re.compile(r"\b(AIza[0-9A-Za-z_\-]{35})"), False),
    ("API key (sk-)", re.compile(r"\b(sk-(?:ant-|proj-|live_|test_)?[A-Za-z0-9_\-]{32,})"), False),
    ("bearer token", re.compile(rf"(?i)\bbearer[ \t]+({_TOKEN}{{20,}})"), True),
    # A quoted literal (code, JSON, YAML) ...
    (
        "secret assigned",
        re.compile(
            rf"{_SECRET_NAME}[\"']?[ \t]*(?::=|=>|=|:)[ \t]*"
            rf"[rbuf]{{0,2}}[\"']({_TOKEN}{{20,}})[\"']"
        ),
        True,
    ),
    # ... or a bare value ending the line (.env, shell, YAML), not an expression.
    (
        "secret assigned",
        re.compile(rf"(?m){_SECRET_NAME}[ \t]*(?:=|:)[ \t]*({_TOKEN}{{20,}})[ \t]*(?:#.*)?$"),
        True,
    ),
]

# Dummies that trip a rule, by exact value: value -> why it is not a secret.
# Every entry must still occur in the repository (a test checks), so the list
# stays short and current. Empty today: the repository's dummies (the local
# endpoint's "offpath-local" keys, moto's, "s3cret" and "a" * 32 tokens in
# tests) are short or repetitive, below the rules, as the pass-through test
# below shows.
ALLOWED: dict[str, str] = {}

# Tracked files that would hold keys or credentials by their name.
CREDENTIAL_FILE = re.compile(
    r"(?i)(^|/)(id_(rsa|dsa|ecdsa|ed25519)|\.env(\..+)?|credentials|\.netrc|\.pypirc|"
    r"[^/]+\.(pem|key|p12|pfx|jks|keystore))$"
)


@dataclass(frozen=True)
class Hit:
    path: str
    line: int
    rule: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.rule}"


def entropy(text: str) -> float:
    """Shannon entropy in bits per character."""
    counts = Counter(text)
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


def _has_run(text: str, length: int = 8) -> bool:
    """Whether ``text`` holds ``length`` consecutive characters in order
    (01234567, abcdefgh, 9876543210): typed by a person, not generated."""
    run, step = 1, 0
    for a, b in itertools.pairwise(text):
        delta = ord(b) - ord(a)
        if delta in (1, -1):
            run, step = (run + 1 if delta == step else 2), delta
        else:
            run, step = 1, 0
        if run >= length:
            return True
    return False


def looks_random(value: str) -> bool:
    """A generated secret, not a word, a name or a placeholder: letters and
    digits mixed, high entropy for its alphabet (hex tops out at 4 bits),
    and no typed run such as 0123456789 or abcdef01 in it."""
    core = value.strip("=")
    if len(core) < 20 or not re.search(r"[0-9]", core) or not re.search(r"[A-Za-z]", core):
        return False
    if _has_run(core):
        return False
    hexadecimal = re.fullmatch(r"[0-9a-fA-F]+", core) is not None
    return entropy(core) >= (3.0 if hexadecimal else 3.7)


def scan_text(path: str, text: str) -> Iterator[Hit]:
    # Whole text per rule (no pattern spans a line): far faster than per line.
    for rule, pattern, needs_randomness in RULES:
        for match in pattern.finditer(text):
            value = match.group(1)
            if value in ALLOWED or (needs_randomness and not looks_random(value)):
                continue
            yield Hit(path, text.count("\n", 0, match.start()) + 1, rule)


def tracked_files() -> list[str]:
    done = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True, timeout=30
    )
    return [p for p in done.stdout.decode().split("\0") if p]


def scan_repository() -> tuple[list[Hit], int]:
    hits: list[Hit] = []
    scanned = 0
    for path in tracked_files():
        file = REPO / path
        if not file.is_file():  # deleted in the work tree, not yet committed
            continue
        data = file.read_bytes()
        if b"\0" in data[:8192]:  # binary: images, the buf image
            continue
        scanned += 1
        hits.extend(scan_text(path, data.decode("utf-8", errors="replace")))
    return hits, scanned


def test_no_tracked_file_holds_a_credential() -> None:
    """Every tracked text file is free of credential patterns."""
    hits, scanned = scan_repository()
    assert scanned > 100, f"only {scanned} files scanned: is this a git checkout?"
    assert not hits, "credential patterns (rotate the secret if real):\n" + "\n".join(
        map(str, hits)
    )


def test_no_key_or_credentials_file_is_tracked() -> None:
    """No private key, keystore, .env or credentials file is committed."""
    assert [p for p in tracked_files() if CREDENTIAL_FILE.search(p)] == []


def test_every_allowed_dummy_still_occurs() -> None:
    """An allow-list entry nobody uses any more is removed, not kept."""
    if not ALLOWED:
        return
    texts = [
        (REPO / p).read_text(errors="replace")
        for p in tracked_files()
        if (REPO / p).is_file() and p != str(Path(__file__).relative_to(REPO))
    ]
    assert [v for v in ALLOWED if not any(v in t for t in texts)] == []


# -- self-tests: samples built at run time ---------------------------------


def _upper_digits(n: int) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    return "".join(secrets.choice(alphabet) for _ in range(n))


def _alnum(n: int) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    while True:
        value = "".join(secrets.choice(alphabet) for _ in range(n))
        if re.search(r"[0-9]", value) and re.search(r"[A-Za-z]", value):
            return value


def _samples() -> list[tuple[str, str]]:
    """(rule, a line that must trip it)."""
    b64 = secrets.token_urlsafe(30)[:40].replace("-", "+").replace("_", "/")
    return [
        ("AWS access key id", f'key = "{"AK" + "IA"}{_upper_digits(16)}"'),
        ("AWS access key id", f"{'AS' + 'IA'}{_upper_digits(16)}"),
        ("AWS secret access key", f"aws_secret_access_key = {b64}"),
        ("AWS secret access key", f'"AWS_SECRET_ACCESS_KEY": "{b64}"'),
        ("private key", "-----BEGIN " + "RSA PRIVATE" + " KEY-----"),
        ("private key", "-----BEGIN " + "PRIVATE" + " KEY-----"),
        ("private key", "-----BEGIN " + "OPENSSH PRIVATE" + " KEY-----"),
        ("GitHub token", "gh" + "p_" + _alnum(36)),
        ("GitHub token", "github" + "_pat_" + _alnum(40)),
        ("Slack token", "xo" + "xb-" + f"{secrets.randbelow(10**12)}-{_alnum(24)}"),
        ("Google API key", "AI" + "za" + _alnum(35)),
        ("API key (sk-)", "s" + "k-ant-" + _alnum(40)),
        ("bearer token", f'headers = {{"authorization": "Bearer {_alnum(32)}"}}'),
        ("secret assigned", f'OFFPATH_INGEST_READ_TOKENS="{secrets.token_urlsafe(32)}"'),
        ("secret assigned", f'api_key = "{secrets.token_hex(20)}"'),
        ("secret assigned", f"  password: {_alnum(24)}"),
        ("secret assigned", f'client_secret="{secrets.token_urlsafe(24)}"'),
    ]


SAMPLES = _samples()


@pytest.mark.parametrize(("rule", "line"), SAMPLES, ids=[rule for rule, _ in SAMPLES])
def test_scanner_catches_a_sample(rule: str, line: str) -> None:
    """Each rule fires on a freshly generated credential of its kind."""
    assert rule in {hit.rule for hit in scan_text("sample", line)}, line


@pytest.mark.parametrize(
    "line",
    [
        'AWS_SECRET_ACCESS_KEY="offpath-local"',
        'token="s3cret"',
        'SECRET = "secret-internal-detail"',
        'SECRET = "arn:aws:dynamodb:eu-west-1:123456789012:table/secret-internal-name"',
        "request.page_token = response.next_page_token",
        'token = f"Bearer {token}"',
        "``authorization: Bearer <token>`` on every call",
        "(-----BEGIN ... PRIVATE KEY-----)",
        'TOKEN_A = "a" * 32',
        'password = "correct-horse-battery-staple"',
        "ENV_READ_TOKENS_FILE = 'OFFPATH_INGEST_READ_TOKENS_FILE'",
        'TOKEN = "read-token-0123456789abcdef"',
        'TOKEN_NEW = "new-token-fedcba9876543210"',
        "with_token = ingest_pb2.ListEventsRequest(page_token=_raw_token(GOOD))",
        "token:\n  ingest_pb2_ListEventsRequest_x1",
    ],
)
def test_scanner_passes_what_is_not_a_secret(line: str) -> None:
    """Dummies, names of settings, templates and prose are not findings."""
    assert list(scan_text("sample", line)) == []


def test_hits_name_the_place_never_the_value() -> None:
    """The failure message points at the line; it does not repeat the secret."""
    value = "gh" + "p_" + _alnum(36)
    (hit,) = scan_text("x.py", f"\n\nclient.login({value!r})\n")
    assert str(hit) == "x.py:3: GitHub token"
    assert value not in str(hit)


@pytest.mark.parametrize(
    ("text", "has_run"),
    [
        ("x01234567y", True),
        ("0123456", False),
        ("token-9876543210", True),
        ("0123x4567", False),
        ("abcdefgh", True),
        ("aceg", False),
    ],
)
def test_typed_runs_mark_a_placeholder(text: str, has_run: bool) -> None:
    """Eight characters in order (up or down) mark a value typed by a person."""
    assert _has_run(text) is has_run
