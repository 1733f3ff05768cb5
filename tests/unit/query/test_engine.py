"""Unit tests for offpath.query.engine: tokenizing, ranking, bounds, catalog validation."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from offpath.query.engine import CatalogError, Match, Skill, SkillIndex, tokenize


def _entry(name: str, **overrides: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": name,
        "category": "platform",
        "aliases": [],
        "keywords": [],
        "description": f"Used {name} in production.",
        "years": 3,
    }
    entry.update(overrides)
    return entry


def _write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "skills.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _skill(name: str, description: str = "Did things.", aliases: tuple[str, ...] = ()) -> Skill:
    return Skill(
        name=name, category="misc", description=description, aliases=aliases, keywords=(), years=1
    )


def _names(matches: list[Match]) -> list[str]:
    return [match.skill.name for match in matches]


@pytest.fixture(scope="module")
def index() -> SkillIndex:
    return SkillIndex.default()


class TestTokenize:
    def test_lowercases_and_drops_stopwords(self) -> None:
        """Question filler words disappear and the remaining words are lower-cased."""
        assert tokenize("Does she know Kubernetes?") == ["kubernete"]

    def test_keeps_compounds_and_their_parts(self) -> None:
        """A compound like "CI/CD" yields itself and its parts, so both spellings can match."""
        assert tokenize("CI/CD") == ["ci/cd", "ci", "cd"]

    def test_keeps_language_suffixes(self) -> None:
        """ "C++" and "C#" stay distinct tokens instead of collapsing to "c"."""
        assert tokenize("C++ and C#") == ["c++", "c#"]

    def test_folds_plurals_onto_singulars(self) -> None:
        """ "queues" and "queue" produce the same token, while short acronyms are untouched."""
        assert tokenize("queues") == tokenize("queue")
        assert tokenize("aws sqs") == ["aws", "sqs"]

    def test_keeps_go(self) -> None:
        """The language name "go" is not treated as a stopword."""
        assert tokenize("Go") == ["go"]


class TestSearchRanking:
    @pytest.mark.parametrize(
        ("query", "expected"),
        [
            ("kubernetes", "Kubernetes"),
            ("k8s", "Kubernetes"),
            ("sqs", "Amazon SQS"),
            ("postgres", "PostgreSQL"),
            ("golang", "Go"),
            ("ci/cd", "CI/CD"),
            ("Does she know Kubernetes?", "Kubernetes"),
        ],
    )
    def test_names_and_aliases_rank_their_skill_first(
        self, index: SkillIndex, query: str, expected: str
    ) -> None:
        """A skill's name or alias puts that skill at the top of the results."""
        assert _names(index.search(query, 3))[0] == expected

    @pytest.mark.parametrize(
        ("query", "expected"),
        [("kubernets", "Kubernetes"), ("prometheous", "Prometheus"), ("postgress", "PostgreSQL")],
    )
    def test_misspellings_still_find_the_skill(
        self, index: SkillIndex, query: str, expected: str
    ) -> None:
        """Character trigrams let a misspelt name find its skill first."""
        assert _names(index.search(query, 3))[0] == expected

    def test_keywords_match(self, index: SkillIndex) -> None:
        """A keyword with no name or alias overlap ("message queue") finds its skill."""
        assert _names(index.search("message queue", 3))[0] == "Amazon SQS"

    def test_category_query_returns_several_skills(self, index: SkillIndex) -> None:
        """Asking for a category returns its skills, not just one."""
        names = _names(index.search("observability", 5))
        assert {"Prometheus", "Grafana", "OpenTelemetry"} <= set(names)

    @pytest.mark.parametrize(
        "query", ["zzzz qqqq", "banana", "lorem ipsum dolor sit amet", "c++", "", "   ?!"]
    )
    def test_unrelated_queries_return_nothing(self, index: SkillIndex, query: str) -> None:
        """Nonsense or off-topic queries give no spurious matches."""
        assert index.search(query, 5) == []

    def test_results_are_sorted_best_first_with_scores_in_range(self, index: SkillIndex) -> None:
        """Scores are cosine similarities in (0, 1] and never increase down the list."""
        matches = index.search("python grpc services", 10)
        scores = [match.score for match in matches]
        assert len(matches) > 1
        assert scores == sorted(scores, reverse=True)
        assert all(0.0 < score <= 1.0 for score in scores)

    def test_exact_self_match_scores_near_one(self) -> None:
        """In a one-skill index, a query equal to the skill's only text scores about 1."""
        index = SkillIndex(
            [
                Skill(
                    name="Zig", category="zig", description="Zig.", aliases=(), keywords=(), years=1
                )
            ]
        )
        (match,) = index.search("zig", 1)
        assert match.score == pytest.approx(1.0)


class TestSearchBounds:
    def test_top_k_bounds_the_result(self, index: SkillIndex) -> None:
        """No more than top_k matches come back even when more skills match."""
        assert len(index.search("aws cloud", 20)) > 2
        assert len(index.search("aws cloud", 2)) == 2
        assert len(index.search("aws cloud", 1)) == 1

    def test_top_k_below_one_is_rejected(self, index: SkillIndex) -> None:
        """A top_k of zero is a caller bug and raises ValueError."""
        with pytest.raises(ValueError, match="top_k"):
            index.search("kubernetes", 0)

    def test_search_is_deterministic(self, index: SkillIndex) -> None:
        """The same query gives the same list on the same and on a freshly built index."""
        first = index.search("aws data pipelines", 10)
        assert index.search("aws data pipelines", 10) == first
        assert SkillIndex.default().search("aws data pipelines", 10) == first

    def test_ties_are_broken_by_name(self) -> None:
        """Skills with identical text score equally and come back in name order."""
        skills = [
            _skill("Bravo", "Ran queues."),
            _skill("Alpha", "Ran queues."),
            _skill("Charlie", "Ran queues."),
        ]
        assert _names(SkillIndex(skills).search("queues", 3)) == ["Alpha", "Bravo", "Charlie"]

    def test_input_order_does_not_change_results(self) -> None:
        """Indexing the same skills in another order gives the same ranking."""
        skills = [
            _skill("Alpha", "Ran queues."),
            _skill("Bravo", "Ran queues and caches."),
            _skill("Charlie", "caches"),
        ]
        forward = SkillIndex(skills).search("queues caches", 3)
        backward = SkillIndex(list(reversed(skills))).search("queues caches", 3)
        assert forward == backward


class TestCatalogValidation:
    def test_valid_file_loads(self, tmp_path: Path) -> None:
        """A well-formed file becomes an index whose skills carry the file's values."""
        path = _write(tmp_path, [_entry("Kubernetes", aliases=["k8s"], years=6), _entry("Helm")])
        index = SkillIndex.from_file(path)
        assert len(index) == 2
        (match,) = index.search("k8s", 1)
        assert match.skill == Skill(
            name="Kubernetes",
            category="platform",
            description="Used Kubernetes in production.",
            aliases=("k8s",),
            keywords=(),
            years=6,
        )

    @pytest.mark.parametrize(
        ("data", "message"),
        [
            ({"skills": []}, "expected a JSON array"),
            ([], "empty"),
            (["Kubernetes"], r"entry 0: expected an object"),
            (
                [_entry("Helm"), {"name": "Kubernetes"}],
                r"entry 1 \('Kubernetes'\): missing field\(s\) category",
            ),
            ([_entry("Helm", colour="red")], r"entry 0 \('Helm'\): unknown field\(s\) colour"),
            ([_entry("  ")], r"entry 0: field 'name' must be a non-empty string"),
            (
                [_entry("Helm", description=7)],
                r"'Helm'\): field 'description' must be a non-empty string",
            ),
            (
                [_entry("Helm", aliases="helm")],
                r"field 'aliases' must be a list of non-empty strings",
            ),
            (
                [_entry("Helm", keywords=["ok", ""])],
                r"field 'keywords' must be a list of non-empty strings",
            ),
            ([_entry("Helm", years="6")], r"field 'years' must be a non-negative integer"),
            ([_entry("Helm", years=-1)], r"field 'years' must be a non-negative integer"),
            ([_entry("Helm", years=True)], r"field 'years' must be a non-negative integer"),
            ([_entry("Helm"), _entry("helm")], r"duplicate skill name 'helm'"),
        ],
    )
    def test_bad_catalogs_raise_catalog_error(
        self, tmp_path: Path, data: Any, message: str
    ) -> None:
        """Each kind of malformed catalog raises CatalogError naming the file and the problem."""
        path = _write(tmp_path, data)
        with pytest.raises(CatalogError, match=message) as excinfo:
            SkillIndex.from_file(path)
        assert str(path) in str(excinfo.value)

    def test_invalid_json_raises_catalog_error(self, tmp_path: Path) -> None:
        """A file that is not JSON raises CatalogError, not a bare JSONDecodeError."""
        path = tmp_path / "skills.json"
        path.write_text('[{"name": "Helm",', encoding="utf-8")
        with pytest.raises(CatalogError, match="not valid JSON"):
            SkillIndex.from_file(path)

    def test_non_utf8_file_raises_catalog_error(self, tmp_path: Path) -> None:
        """A file in another encoding raises CatalogError naming the file."""
        path = tmp_path / "skills.json"
        path.write_bytes('[{"name": "Caf\u00e9"}]'.encode("latin-1"))
        with pytest.raises(CatalogError, match="not UTF-8") as excinfo:
            SkillIndex.from_file(path)
        assert str(path) in str(excinfo.value)

    def test_catalog_error_is_a_value_error(self) -> None:
        """Callers catching ValueError also catch catalog problems."""
        assert issubclass(CatalogError, ValueError)

    def test_constructor_rejects_empty_and_duplicate_skills(self) -> None:
        """Building an index in code applies the same non-empty and unique-name rules."""
        with pytest.raises(CatalogError, match="empty"):
            SkillIndex([])
        with pytest.raises(CatalogError, match="duplicate"):
            SkillIndex([_skill("Go"), _skill("GO")])


class TestPackagedCatalog:
    def test_default_catalog_loads(self, index: SkillIndex) -> None:
        """The catalog shipped in the package loads and holds around fifty skills."""
        assert 40 <= len(index) <= 60

    def test_default_catalog_names_are_unique(self) -> None:
        """No two packaged skills share a name, ignoring case."""
        resource = resources.files("offpath.query").joinpath("data", "skills.json")
        names = [
            entry["name"].casefold() for entry in json.loads(resource.read_text(encoding="utf-8"))
        ]
        assert len(names) == len(set(names))

    def test_default_catalog_covers_the_expected_areas(self, index: SkillIndex) -> None:
        """Each area the service is asked about has a skill that search can find."""
        for query, expected in [
            ("python", "Python"),
            ("dynamodb", "Amazon DynamoDB"),
            ("terraform", "Terraform"),
            ("opentelemetry", "OpenTelemetry"),
            ("grpc", "gRPC"),
            ("incident response", "Incident response"),
            ("vector search", "Vector search"),
        ]:
            assert _names(index.search(query, 1)) == [expected], query
