"""Unit tests for offpath.query.generator: token counting and the template generator."""

from __future__ import annotations

import pytest

from offpath.query.engine import Match, Skill, SkillIndex
from offpath.query.generator import Generated, Generator, TemplateGenerator, count_tokens


def _match(
    name: str, years: int = 6, description: str = "Ran 40-node EKS clusters.", score: float = 0.5
) -> Match:
    skill = Skill(
        name=name,
        category="platform",
        description=description,
        aliases=(),
        keywords=(),
        years=years,
    )
    return Match(skill=skill, score=score)


class TestCountTokens:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("", 0),
            ("   ", 0),
            ("Kubernetes", 1),
            ("Yes — Kubernetes (6 years).", 8),
            ("CI/CD, k8s!", 6),
        ],
    )
    def test_counts_words_and_punctuation(self, text: str, expected: int) -> None:
        """Each word and each punctuation mark counts as one token; whitespace counts as none."""
        assert count_tokens(text) == expected


class TestTemplateGenerator:
    def test_satisfies_the_generator_protocol(self) -> None:
        """TemplateGenerator can be used wherever a Generator is expected."""
        generator: Generator = TemplateGenerator()
        assert isinstance(generator, Generator)
        assert generator.model == "template-v1"

    def test_answer_leads_with_the_top_skill(self) -> None:
        """The answer gives the best match with years and description, then the rest as related."""
        matches = [_match("Kubernetes"), _match("Helm", score=0.3), _match("Docker", score=0.2)]
        generated = TemplateGenerator().generate("kubernetes", matches)
        assert generated.text == (
            "Kubernetes (6 years): Ran 40-node EKS clusters. Related: Helm, Docker."
        )
        assert generated.model == "template-v1"

    def test_yes_no_question_is_answered_with_yes(self) -> None:
        """A "Does ..." question gets a "Yes — " prefix; a "Which ..." question does not."""
        matches = [_match("Kubernetes")]
        assert (
            TemplateGenerator()
            .generate("Does she know k8s?", matches)
            .text.startswith("Yes — Kubernetes")
        )
        assert (
            TemplateGenerator().generate("Which platforms?", matches).text.startswith("Kubernetes")
        )

    def test_single_match_has_no_related_list(self) -> None:
        """With one match, the answer does not end in an empty "Related:" list."""
        text = TemplateGenerator().generate("helm", [_match("Helm")]).text
        assert "Related" not in text

    def test_years_are_worded_naturally(self) -> None:
        """One year is singular and zero years reads as "under a year"."""
        assert "(1 year)" in TemplateGenerator().generate("x", [_match("Rust", years=1)]).text
        assert "(under a year)" in TemplateGenerator().generate("x", [_match("Zig", years=0)]).text

    def test_description_gets_terminal_punctuation(self) -> None:
        """A description without a final full stop still yields a properly ended sentence."""
        text = TemplateGenerator().generate("x", [_match("Go", description="Wrote services")]).text
        assert text == "Go (6 years): Wrote services."

    def test_empty_matches_give_a_polite_no_match_answer(self) -> None:
        """With no matches, the answer says nothing in the CV matches and invents no skill."""
        generated = TemplateGenerator().generate("zzzz qqqq", [])
        assert "nothing in the CV matches" in generated.text
        assert "zzzz" not in generated.text
        assert generated.token_count == count_tokens(generated.text)

    def test_token_count_matches_the_text(self) -> None:
        """token_count is exactly count_tokens of the returned text."""
        generated = TemplateGenerator().generate(
            "kubernetes", [_match("Kubernetes"), _match("Helm")]
        )
        assert generated.token_count == count_tokens(generated.text) > 0

    def test_is_deterministic(self) -> None:
        """The same query and matches always produce the same Generated value."""
        matches = [_match("Kubernetes"), _match("Helm")]
        assert TemplateGenerator().generate("k8s", matches) == TemplateGenerator().generate(
            "k8s", matches
        )

    def test_end_to_end_with_the_packaged_catalog(self) -> None:
        """Searching the packaged catalog and generating mentions the top skill found."""
        matches = SkillIndex.default().search("Has she run Kubernetes in production?", 3)
        generated = TemplateGenerator().generate("Has she run Kubernetes in production?", matches)
        assert isinstance(generated, Generated)
        assert generated.text.startswith("Yes — Kubernetes (6 years): ")
