"""Vector search over the CV's skills catalog, in pure standard-library Python.

Contract:

* A catalog is a JSON array of skill objects with exactly the keys ``name``,
  ``category``, ``description`` (non-empty strings), ``aliases`` and
  ``keywords`` (lists of non-empty strings) and ``years`` (a non-negative
  integer). Names must be unique, ignoring case. Anything else raises
  :class:`CatalogError` naming the file and the offending entry.
* :meth:`SkillIndex.search` returns at most ``top_k`` :class:`Match` objects,
  best first, each with a cosine similarity in ``(0, 1]``; equal scores are
  ordered by skill name, so the same query always gives the same list.

How it scores: every skill and every query becomes two TF-IDF vectors, one
over whole words (so aliases such as "k8s" or "ci/cd" match exactly) and one
over character trigrams of those words (so "kubernete" or "postgre" still
find their skill). Each vector is L2-normalised and the pair is concatenated
with weights ``sqrt(WORD_SHARE)`` and ``sqrt(1 - WORD_SHARE)``, which keeps the
whole vector unit length: the score is a true cosine and equals
``WORD_SHARE * word_cosine + (1 - WORD_SHARE) * trigram_cosine``. Skill
vectors are built once, in the constructor, into an inverted index, so a
search only touches the postings of the query's own features.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final

__all__ = [
    "MIN_FUZZY_SCORE",
    "MIN_SCORE",
    "CatalogError",
    "Match",
    "Skill",
    "SkillIndex",
    "tokenize",
]

# Share of the score that comes from whole-word matches; the rest comes from
# trigrams. Words dominate so an exact name or alias beats a fuzzy lookalike.
WORD_SHARE: Final = 0.65

# Where a term appears says how much it tells about the skill: the name is
# the strongest evidence, the free-text description the weakest. The pair is
# (word weight, trigram weight). Trigrams exist to forgive typos in what people
# actually type, i.e. names, aliases and keywords; taking them from category
# and description too only adds chance overlaps ("banana" vs "grafana").
FIELD_WEIGHTS: Final[Mapping[str, tuple[float, float]]] = {
    "name": (3.0, 3.0),
    "aliases": (2.0, 2.0),
    "keywords": (1.0, 1.0),
    "category": (2.0, 0.0),
    "description": (0.5, 0.0),
}

# Minimum scores, which keep unrelated queries from returning anything.
# Trigrams make every query overlap a little with something (" co", "ing"):
# over a list of everyday English words, the best trigram-only match mostly
# scores 0.02-0.10, while a misspelt skill name ("kubernets", "grafna",
# "postgress") scores 0.13-0.25. A skill sharing a whole word with the query
# has real evidence, so a lower bar applies to it: a multi-word question
# ("platform engineering") spreads its weight and scores 0.05-0.12 on skills
# that genuinely match one of its words.
MIN_SCORE: Final = 0.05
MIN_FUZZY_SCORE: Final = 0.12

# Words that carry no meaning in a question about a CV ("Does she know Go?").
# Removing them on both sides keeps them from diluting the query vector and
# from producing matches through descriptions. "go" is deliberately absent.
# fmt: off
_STOPWORDS: Final = frozenset({
    "a", "about", "all", "also", "am", "an", "and", "any", "are", "as", "at", "be", "been",
    "being", "but", "by", "can", "could", "did", "do", "does", "done", "ever", "for", "from",
    "had", "has", "have", "he", "her", "his", "how", "i", "if", "in", "into", "is", "it", "its",
    "know", "knows", "me", "much", "my", "no", "not", "of", "on", "or", "our", "per", "she",
    "so", "some", "tell", "than", "that", "the", "their", "them", "then", "there", "these",
    "they", "this", "those", "to", "us", "use", "used", "uses", "using", "was", "we", "were",
    "what", "when", "where", "which", "who", "whom", "why", "will", "with", "would", "you",
    "your", "experience", "experienced", "familiar", "worked", "working", "skill", "skills",
    "candidate", "cv", "resume", "year", "years", "person",
})
# fmt: on

# A word is a run of letters/digits, optionally suffixed with "+" or "#" (c++,
# c#), optionally joined to more such runs by ".", "/" or "-" (node.js,
# ci/cd, http/2, event-driven). A trailing "." is left out, so "S3." is "s3".
_WORD = r"[^\W_]+[+#]*"
_TOKEN_RE: Final = re.compile(rf"{_WORD}(?:[./-]{_WORD})*")
_JOINERS_RE: Final = re.compile(r"[./-]")

_REQUIRED_FIELDS: Final[Mapping[str, str]] = {
    "name": "a non-empty string",
    "category": "a non-empty string",
    "description": "a non-empty string",
    "aliases": "a list of non-empty strings",
    "keywords": "a list of non-empty strings",
    "years": "a non-negative integer",
}

_SparseVector = dict[str, float]


class CatalogError(ValueError):
    """The skills catalog is malformed; the message names the file and entry."""


@dataclass(frozen=True, slots=True)
class Skill:
    """One skill from the CV, as listed in the catalog."""

    name: str
    category: str
    description: str
    aliases: tuple[str, ...]
    keywords: tuple[str, ...]
    years: int


@dataclass(frozen=True, slots=True)
class Match:
    """A skill that matched a query, with its cosine similarity in [0, 1]."""

    skill: Skill
    score: float


def tokenize(text: str) -> list[str]:
    """Return the searchable words of ``text``: lower-cased, stopwords removed.

    A compound such as "ci/cd" yields itself and its parts ("ci", "cd"), so
    both "CI/CD" and "ci cd" find it.
    """
    words: list[str] = []
    for token in _TOKEN_RE.findall(text.lower()):
        parts = _JOINERS_RE.split(token)
        if len(parts) > 1 and token not in _STOPWORDS:
            words.append(token)
        words.extend(_stem(part) for part in parts if part not in _STOPWORDS)
    return words


def _stem(word: str) -> str:
    """Fold a plural onto its singular ("databases" -> "database").

    Deliberately crude: both the catalog and the query go through it, so an
    over-stripped word ("redis" -> "redi") still matches itself; all that
    matters is that "queues" and "queue" meet. Words of three letters or
    fewer are left alone because they are mostly acronyms (aws, sqs, k8s).
    """
    if len(word) <= 3 or not word.endswith("s") or word.endswith("ss"):
        return word
    if word.endswith("ies"):
        return word[:-3] + "y"
    return word[:-1]


def _atoms(words: Iterable[str]) -> Iterable[str]:
    """Yield the non-compound words, the units trigrams are taken from."""
    # Compounds are skipped because their parts are already in the list;
    # taking trigrams of both would count every letter twice.
    return (word for word in words if not _JOINERS_RE.search(word))


def _trigrams(word: str) -> Iterable[str]:
    # Spaces mark the word boundaries, so "go" still yields " go" and "go ",
    # and a prefix match ("kube" vs "kubernetes") shares the leading trigram.
    padded = f" {word} "
    return (padded[i : i + 3] for i in range(len(padded) - 2))


def _features(
    weighted_texts: Iterable[tuple[str, float, float]],
) -> tuple[_SparseVector, _SparseVector]:
    """Weighted term frequencies of words and of trigrams over several texts.

    Each text comes with its word weight and its trigram weight.
    """
    words: _SparseVector = {}
    grams: _SparseVector = {}
    for text, word_weight, gram_weight in weighted_texts:
        tokens = tokenize(text)
        for word in tokens:
            words[word] = words.get(word, 0.0) + word_weight
        if gram_weight:
            for atom in _atoms(tokens):
                for gram in _trigrams(atom):
                    grams[gram] = grams.get(gram, 0.0) + gram_weight
    return words, grams


def _skill_texts(skill: Skill) -> Iterable[tuple[str, float, float]]:
    yield skill.name, *FIELD_WEIGHTS["name"]
    for alias in skill.aliases:
        yield alias, *FIELD_WEIGHTS["aliases"]
    for keyword in skill.keywords:
        yield keyword, *FIELD_WEIGHTS["keywords"]
    yield skill.category, *FIELD_WEIGHTS["category"]
    yield skill.description, *FIELD_WEIGHTS["description"]


def _document_frequencies(vectors: Iterable[_SparseVector]) -> dict[str, int]:
    df: dict[str, int] = {}
    for vector in vectors:
        for feature in vector:
            df[feature] = df.get(feature, 0) + 1
    return df


def _idf(df: Mapping[str, int], size: int) -> dict[str, float]:
    # Smoothed IDF: always positive, so a feature present in every skill still
    # counts a little instead of vanishing.
    return {feature: math.log((1 + size) / (1 + count)) + 1.0 for feature, count in df.items()}


def _weigh(
    tf: Mapping[str, float], idf: Mapping[str, float], unseen_idf: float, share: float
) -> _SparseVector:
    """TF-IDF, L2-normalised, then scaled so its squared norm is ``share``."""
    weighted = {feature: freq * idf.get(feature, unseen_idf) for feature, freq in tf.items()}
    norm = math.sqrt(sum(value * value for value in weighted.values()))
    if norm == 0.0:
        return {}
    scale = math.sqrt(share) / norm
    return {feature: value * scale for feature, value in weighted.items()}


class SkillIndex:
    """An immutable TF-IDF index over a list of skills.

    Build it once (``SkillIndex.default()`` at service start-up) and share it:
    construction does all the vector work, and :meth:`search` only reads
    precomputed data, so it is safe to call from many threads at once.
    """

    __slots__ = ("_grams", "_idf_grams", "_idf_words", "_skills", "_unseen_idf", "_words")

    def __init__(self, skills: Sequence[Skill]) -> None:
        """Index ``skills``; raise :class:`CatalogError` if empty or names repeat."""
        if not skills:
            raise CatalogError("skills catalog is empty: at least one skill is required")
        _check_unique_names((skill.name for skill in skills), source="<skills>")
        self._skills: tuple[Skill, ...] = tuple(skills)

        features = [_features(_skill_texts(skill)) for skill in self._skills]
        size = len(self._skills)
        self._idf_words = _idf(_document_frequencies(words for words, _ in features), size)
        self._idf_grams = _idf(_document_frequencies(grams for _, grams in features), size)
        # A query feature no skill has gets the highest possible IDF: it
        # cannot add to any score, but it does (rightly) lower the cosine of
        # a query that is mostly about something the CV does not contain.
        self._unseen_idf = math.log(1 + size) + 1.0

        self._words: dict[str, list[tuple[int, float]]] = {}
        self._grams: dict[str, list[tuple[int, float]]] = {}
        for position, (words, grams) in enumerate(features):
            word_vector = _weigh(words, self._idf_words, self._unseen_idf, WORD_SHARE)
            gram_vector = _weigh(grams, self._idf_grams, self._unseen_idf, 1.0 - WORD_SHARE)
            for feature, value in word_vector.items():
                self._words.setdefault(feature, []).append((position, value))
            for feature, value in gram_vector.items():
                self._grams.setdefault(feature, []).append((position, value))

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> SkillIndex:
        """Load and index a JSON catalog file.

        Raises :class:`CatalogError` if the file is not UTF-8 JSON or fails
        validation; ``OSError`` (for example ``FileNotFoundError``) if it
        cannot be read at all.
        """
        file = Path(path)
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise CatalogError(f"{file}: not UTF-8 text: {exc}") from exc
        return cls(_parse_catalog(text, source=str(file)))

    @classmethod
    def default(cls) -> SkillIndex:
        """Load and index the catalog shipped in the package (data/skills.json)."""
        resource = resources.files("offpath.query").joinpath("data", "skills.json")
        return cls(_parse_catalog(resource.read_text(encoding="utf-8"), source=str(resource)))

    def __len__(self) -> int:
        """Return the number of skills indexed."""
        return len(self._skills)

    @property
    def skills(self) -> tuple[Skill, ...]:
        """The indexed skills, in catalog order."""
        return self._skills

    def search(self, query: str, top_k: int) -> list[Match]:
        """Return up to ``top_k`` skills matching ``query``, best first.

        Only skills scoring at least :data:`MIN_SCORE` (or
        :data:`MIN_FUZZY_SCORE` when they share no whole word with the query)
        are returned, so a query unrelated to the catalog gives an empty list.
        Equal scores are ordered by name. Raises ``ValueError`` if ``top_k`` is
        below 1.
        """
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        words, grams = _features(((query, 1.0, 1.0),))
        scores = [0.0] * len(self._skills)
        floors = [MIN_FUZZY_SCORE] * len(self._skills)
        for feature, value in _weigh(words, self._idf_words, self._unseen_idf, WORD_SHARE).items():
            for position, weight in self._words.get(feature, ()):
                scores[position] += value * weight
                floors[position] = MIN_SCORE
        for feature, value in _weigh(
            grams, self._idf_grams, self._unseen_idf, 1.0 - WORD_SHARE
        ).items():
            for position, weight in self._grams.get(feature, ()):
                scores[position] += value * weight

        # Rounding before comparing makes scores that differ only by float
        # summation error count as ties, which are then broken by name.
        ranked = sorted(
            (
                (-round(score, 12), self._skills[position].name, position)
                for position, score in enumerate(scores)
                if score >= floors[position]
            ),
        )
        return [
            Match(skill=self._skills[position], score=min(1.0, -negated))
            for negated, _, position in ranked[:top_k]
        ]


def _check_unique_names(names: Iterable[str], source: str) -> None:
    seen: dict[str, str] = {}
    for name in names:
        key = name.casefold()
        if key in seen:
            raise CatalogError(
                f"{source}: duplicate skill name {name!r} (already used as {seen[key]!r})"
            )
        seen[key] = name


def _parse_catalog(text: str, source: str) -> list[Skill]:
    """Parse and validate catalog JSON; ``source`` names the file in errors."""
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CatalogError(f"{source}: not valid JSON: {exc}") from exc
    if not isinstance(data, list):
        raise CatalogError(f"{source}: expected a JSON array of skills, got {type(data).__name__}")
    if not data:
        raise CatalogError(f"{source}: the catalog is empty; at least one skill is required")
    skills = [_parse_entry(entry, source, index) for index, entry in enumerate(data)]
    _check_unique_names((skill.name for skill in skills), source)
    return skills


def _parse_entry(entry: object, source: str, index: int) -> Skill:
    where = f"{source}: entry {index}"
    if not isinstance(entry, dict):
        raise CatalogError(f"{where}: expected an object, got {type(entry).__name__}")
    name = entry.get("name")
    if isinstance(name, str) and name.strip():
        where = f"{where} ({name!r})"
    missing = [key for key in _REQUIRED_FIELDS if key not in entry]
    if missing:
        raise CatalogError(f"{where}: missing field(s) {', '.join(missing)}")
    unknown = sorted(set(entry) - set(_REQUIRED_FIELDS))
    if unknown:
        raise CatalogError(f"{where}: unknown field(s) {', '.join(map(str, unknown))}")

    def text(key: str) -> str:
        value = entry[key]
        if not isinstance(value, str) or not value.strip():
            raise CatalogError(
                f"{where}: field {key!r} must be {_REQUIRED_FIELDS[key]}, got {value!r}"
            )
        return value.strip()

    def texts(key: str) -> tuple[str, ...]:
        value = entry[key]
        if not isinstance(value, list) or not all(
            isinstance(item, str) and item.strip() for item in value
        ):
            raise CatalogError(
                f"{where}: field {key!r} must be {_REQUIRED_FIELDS[key]}, got {value!r}"
            )
        return tuple(item.strip() for item in value)

    years = entry["years"]
    # bool is a subclass of int; "years": true is a typo, not one year.
    if not isinstance(years, int) or isinstance(years, bool) or years < 0:
        raise CatalogError(
            f"{where}: field 'years' must be {_REQUIRED_FIELDS['years']}, got {years!r}"
        )

    return Skill(
        name=text("name"),
        category=text("category"),
        description=text("description"),
        aliases=texts("aliases"),
        keywords=texts("keywords"),
        years=years,
    )
