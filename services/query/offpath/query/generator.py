"""Answer generators: turn a query and its matched skills into answer text.

Contract: a :class:`Generator` is any object with a ``model`` name and a
``generate(query, matches)`` method returning :class:`Generated`. It receives
the matches best first, exactly as :meth:`SkillIndex.search` returns them
(possibly none), must not mutate them, and reports ``token_count`` for the
text it returned. The service depends only on this protocol, so a model-backed
generator can replace :class:`TemplateGenerator` without touching the handler.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol, runtime_checkable

from offpath.query.engine import Match

__all__ = ["Generated", "Generator", "TemplateGenerator", "count_tokens"]

# A token is a run of word characters or a single punctuation mark: a simple,
# model-independent count that is stable across releases.
_TOKEN_RE: Final = re.compile(r"\w+|[^\w\s]")

# First words of questions that expect a yes or no ("Does she know Go?").
_YES_NO_OPENERS: Final = frozenset(
    {
        "am",
        "are",
        "can",
        "could",
        "did",
        "do",
        "does",
        "has",
        "have",
        "is",
        "was",
        "were",
        "will",
        "would",
    }
)

NO_MATCH_ANSWER: Final = (
    "Sorry, nothing in the CV matches that question. "
    "Try asking about a specific technology, tool or practice, "
    "such as Python, Kubernetes or incident response."
)


def count_tokens(text: str) -> int:
    """Return the number of tokens in ``text``: words and punctuation marks."""
    return len(_TOKEN_RE.findall(text))


@dataclass(frozen=True, slots=True)
class Generated:
    """A generated answer, the model that wrote it and its length in tokens."""

    text: str
    model: str
    token_count: int


@runtime_checkable
class Generator(Protocol):
    """Composes an answer to ``query`` from the skills that matched it."""

    @property
    def model(self) -> str:
        """Name of the model, reported with every answer."""
        ...

    def generate(self, query: str, matches: Sequence[Match]) -> Generated:
        """Answer ``query`` from ``matches`` (best first; may be empty)."""
        ...


class TemplateGenerator:
    """Deterministic default generator that fills a fixed template.

    The answer leads with the best match (name, years, what was done with it)
    and lists the other matches as related skills. It never echoes the query,
    so user input cannot leak into, or inflate, the answer. Same input, same
    output: no randomness, clock or I/O.
    """

    __slots__ = ()

    MODEL: Final = "template-v1"

    @property
    def model(self) -> str:
        """The template's version, ``"template-v1"``."""
        return self.MODEL

    def generate(self, query: str, matches: Sequence[Match]) -> Generated:
        """Compose the answer; a polite "nothing matches" when ``matches`` is empty."""
        text = _compose(query, matches) if matches else NO_MATCH_ANSWER
        return Generated(text=text, model=self.MODEL, token_count=count_tokens(text))


def _compose(query: str, matches: Sequence[Match]) -> str:
    top = matches[0].skill
    text = f"{top.name} ({_years(top.years)})"
    description = top.description.strip()
    if description:
        text += f": {description}"
    if text[-1] not in ".!?":
        text += "."
    # "Does she know Go?" reads best answered with "Yes"; "Which databases?"
    # does not, so the prefix is only added to yes/no questions.
    if _is_yes_no_question(query):
        text = f"Yes — {text}"
    related = [match.skill.name for match in matches[1:]]
    if related:
        text += f" Related: {', '.join(related)}."
    return text


def _is_yes_no_question(query: str) -> bool:
    first = _TOKEN_RE.search(query)
    return first is not None and first.group().lower() in _YES_NO_OPENERS


def _years(years: int) -> str:
    if years < 1:
        return "under a year"
    return "1 year" if years == 1 else f"{years} years"
