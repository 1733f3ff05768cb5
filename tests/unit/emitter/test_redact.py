"""Unit tests for offpath.emitter.redact: the redaction corpus (texts that must be masked,
texts that must come back unchanged), properties of redact over generated text, its cost
on hostile input, the query text policies (redact, keep, hash, drop) and the prefix a
rejected request keeps."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from offpath.emitter import EventRecord
from offpath.emitter.redact import (
    HASH_HEX_CHARS,
    HASH_PREFIX,
    QUERY_TEXT_MODES,
    REDACT,
    REJECTED_QUERY_CHARS,
    TRUNCATED_MARK,
    QueryTextPolicy,
    redact,
    rejected_prefix,
)

from .redact_corpus import NEGATIVES, POSITIVES, Positive

KEY = b"k3y-for-tests-0123456789abcdef"
KINDS = {"email", "phone", "card", "iban", "ip", "number"}
_LONG_DIGITS = re.compile(r"\d{6,}")
_EMAIL_SHAPE = re.compile(r"[\w.+-]+@[\w-]+\.[A-Za-z]{2,}")


class TestCorpus:
    def test_corpus_is_large_enough_and_covers_every_kind(self) -> None:
        """The corpus holds at least 40 texts to mask, of every kind, and 30 to keep."""
        assert len(POSITIVES) >= 40
        assert len(NEGATIVES) >= 30
        assert {positive.kind for positive in POSITIVES} == KINDS
        assert len(set(NEGATIVES)) == len(NEGATIVES)

    @pytest.mark.parametrize(
        "case", POSITIVES, ids=[f"{i}-{p.kind}" for i, p in enumerate(POSITIVES)]
    )
    def test_positive_is_masked_as_its_kind(self, case: Positive) -> None:
        """Each text with personal data comes back as expected: its data replaced by the
        placeholder of its kind, the words around it kept."""
        assert f"[{case.kind}]" in case.expected
        assert redact(case.text) == case.expected

    @pytest.mark.parametrize("text", NEGATIVES)
    def test_negative_is_unchanged(self, text: str) -> None:
        """An ordinary question, numbers, versions, years and dates included, is kept
        exactly as asked."""
        assert redact(text) == text

    def test_a_rejected_prefix_keeps_its_mark_through_redaction(self) -> None:
        """The mark of a cut text is not rewritten when the text around it is masked."""
        cut = rejected_prefix("my SSN is 078-05-1120, am I hired? " + "please " * 100)
        assert redact(cut) == "my SSN is [number], am I hired? please please please please p…"

    def test_the_testers_query_is_masked(self) -> None:
        """The query a tester found stored verbatim loses its social security number."""
        assert redact("my SSN is 078-05-1120, am I hired?") == "my SSN is [number], am I hired?"


class TestProperties:
    @settings(max_examples=300, deadline=None)
    @given(
        st.text(
            alphabet=st.sampled_from(list("0123456789 -.+()/@abcXYZ_,:#")),
            max_size=120,
        )
    )
    def test_no_long_digit_run_or_address_survives_and_redact_is_idempotent(
        self, text: str
    ) -> None:
        """Whatever the text, its redaction holds no run of six digits and nothing shaped
        like an e-mail address, and redacting it again changes nothing."""
        once = redact(text)
        assert _LONG_DIGITS.search(once) is None
        assert _EMAIL_SHAPE.search(once) is None
        assert redact(once) == once

    @pytest.mark.parametrize(
        "text",
        [
            "1" * 2048,
            "1 " * 1024,
            "+1 " * 682,
            "0-" * 1024,
            "1." * 1024,
            "a@" * 1024,
            "a." * 1023 + "@",
            "(" * 1024 + "0" * 1024,
            "4" * 19 + " " + "4 " * 1014,
            "DE89" + " 3704" * 511,
            "".join(chr(0x4E00 + i) for i in range(2048)),  # 2,048 characters never seen
            "\u0661\u00a0" * 1024,  # Arabic-Indic digits and no-break spaces
            ("reach a.b@example.com or 555-010-0123 about 2024 roles; " * 40)[:2048],
        ],
        ids=lambda text: repr(text[:12]),
    )
    def test_hostile_text_of_the_longest_query_takes_milliseconds(self, text: str) -> None:
        """No input of the longest allowed query makes a pattern backtrack: every one is
        redacted in well under 50 ms (about 1 ms here; exponential backtracking would take
        seconds). The best of three runs, so a busy machine's pause is not counted."""
        took = []
        for _ in range(3):
            started = time.perf_counter()
            redact(text)
            took.append(time.perf_counter() - started)
        assert min(took) < 0.05


class TestPolicy:
    def test_redact_is_the_default(self) -> None:
        """A policy made without a mode, and the shared default, redact."""
        assert QueryTextPolicy().mode == "redact" == REDACT.mode
        assert REDACT("mail jane@example.com") == "mail [email]"

    def test_keep_returns_the_text_as_asked(self) -> None:
        """keep changes nothing."""
        text = "mail jane@example.com, SSN 078-05-1120"
        assert QueryTextPolicy("keep")(text) == text

    def test_drop_returns_an_empty_text(self) -> None:
        """drop keeps nothing of the text."""
        assert QueryTextPolicy("drop")("mail jane@example.com") == ""

    def test_hash_is_keyed_truncated_and_groups_equal_queries(self) -> None:
        """hash gives 'hmac:' and 32 hex characters; texts equal after normalisation (case,
        spacing, compatibility forms) share a digest, other texts and other keys do not,
        and nothing of the text is in it."""
        policy = QueryTextPolicy("hash", KEY)
        digest = policy("Does she know Kubernetes?")
        assert re.fullmatch(rf"{HASH_PREFIX}[0-9a-f]{{{HASH_HEX_CHARS}}}", digest)
        assert policy("  does   she know KUBERNETES?") == digest
        assert policy("Does she know \uff2bubernetes?") == digest  # a fullwidth K: NFKC
        assert policy("Does she know Terraform?") != digest
        assert QueryTextPolicy("hash", b"another-key-0123456789")("Does she know Kubernetes?") != (
            digest
        )
        assert "kubernetes" not in digest.lower()

    @pytest.mark.parametrize("mode", QUERY_TEXT_MODES)
    def test_an_empty_text_stays_empty(self, mode: str) -> None:
        """No mode makes something of nothing (an empty query's event stays empty)."""
        policy = QueryTextPolicy(mode, KEY)  # type: ignore[arg-type]
        assert policy("") == ""

    def test_hash_without_a_key_and_unknown_modes_are_refused(self) -> None:
        """hash needs a key; a mode that does not exist is an error, not a fallback."""
        with pytest.raises(ValueError, match="needs a key"):
            QueryTextPolicy("hash")
        with pytest.raises(ValueError, match="not one of"):
            QueryTextPolicy("scramble")  # type: ignore[arg-type]

    def test_repr_never_shows_the_key(self) -> None:
        """A policy printed or logged shows its mode, never its key."""
        policy = QueryTextPolicy("hash", KEY)
        assert repr(policy) == "QueryTextPolicy(mode='hash')"
        assert KEY.decode() not in repr(policy)

    def test_to_proto_redacts_unless_told_otherwise(self) -> None:
        """A record's wire form carries the redacted text by default, and what the policy
        given makes of it otherwise; the record itself is not changed."""
        record = EventRecord(
            event_id="e-1",
            occurred_at_ns=1,
            service="s",
            method="/s/M",
            query="mail jane@example.com",
        )
        assert record.to_proto("p").query == "mail [email]"
        assert record.to_proto("p", QueryTextPolicy("keep")).query == "mail jane@example.com"
        assert record.to_proto("p", QueryTextPolicy("drop")).query == ""
        assert record.query == "mail jane@example.com"


class TestRejectedPrefix:
    def test_short_text_is_kept_whole(self) -> None:
        """A text within the limit is returned as is, without a mark."""
        text = "x" * REJECTED_QUERY_CHARS
        assert rejected_prefix(text) == text
        assert rejected_prefix("") == ""

    def test_long_text_is_cut_at_the_limit_with_a_mark(self) -> None:
        """A text over the limit keeps its first 64 characters and a mark saying it was cut."""
        assert rejected_prefix("x" * 196_000) == "x" * REJECTED_QUERY_CHARS + TRUNCATED_MARK
        words = "word " * 100
        cut = rejected_prefix(words)
        assert cut.endswith(TRUNCATED_MARK)
        assert len(cut) <= REJECTED_QUERY_CHARS + 1
        assert words.startswith(cut[: -len(TRUNCATED_MARK)])

    def test_a_word_cut_in_two_with_digits_or_an_at_sign_is_left_out(self) -> None:
        """Half an e-mail address or half a card number at the cut could slip past redaction,
        so that word is left out; the words before it are kept."""
        head = "a" * 50 + " pay"
        card = rejected_prefix(head + " 4111111111111111" + " x" * 100)
        assert card == head + TRUNCATED_MARK
        mail = rejected_prefix(head + " jane.doe@example.com" + " x" * 100)
        assert mail == head + TRUNCATED_MARK
        assert rejected_prefix("9" * 100) == TRUNCATED_MARK
