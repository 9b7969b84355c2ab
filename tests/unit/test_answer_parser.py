"""The VLM answer parser: tolerant of fences and prose, strict about meaning."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agents.answer_parser import parse_answer
from streams.errors import UnparseableAnswer


@pytest.mark.parametrize(
    ("text", "level", "score"),
    [
        ('{"risk_level": "high", "risk_score": 0.8, "summary": "close"}', "high", 0.8),
        ('```json\n{"risk_level": "low", "risk_score": 0.2, "summary": "ok"}\n```', "low", 0.2),
        (
            'Here is my assessment:\n{"risk_level": "Critical", "risk_score": 0.97, "summary": "x"}\nStay safe.',
            "critical",
            0.97,
        ),
        ('{"risk_level": "medium", "risk_score": 55, "summary": "percent"}', "medium", 0.55),
        ('{"risk_score": 0.9}', "critical", 0.9),
        ('{"risk_level": "none"}', "none", 0.05),
        ('{"note": "{braces} in a string", "risk_level": "low", "risk_score": "0.3"}', "low", 0.3),
        # the prompt's template echoed before the answer: skipped, not a failed (paid) call
        (
            'Format: {"risk_level": "none|low|medium|high|critical", "risk_score": 0.0}\n'
            '{"risk_level": "high", "risk_score": 0.8, "summary": "close"}',
            "high",
            0.8,
        ),
        ('{"risk_level": "high", "risk_score": 0.5}', "high", 0.5),  # a band apart: the model's own pair
        # further apart: alerts go by the level, so the graver of the two stands
        ('{"risk_level": "none", "risk_score": 0.97}', "critical", 0.97),
        ('{"risk_level": "critical", "risk_score": 0.3}', "critical", 0.95),
        # a score of 1 or 10 is a full score on one scale and a tenth on another: read on the one the
        # level agrees with (these were critical alerts: the full score, then the graver of the two)
        ('{"risk_level": "low", "risk_score": 1}', "low", 0.1),
        ('{"risk_level": "none", "risk_score": 1}', "none", 0.1),
        ('{"risk_level": "low", "risk_score": 10}', "low", 0.1),
        ('{"risk_level": "critical", "risk_score": 1}', "critical", 1.0),
        ('{"risk_level": "critical", "risk_score": 10}', "critical", 1.0),
        ('{"risk_score": 1}', "critical", 1.0),
        ('{"risk_level": "high", "risk_score": 8}', "high", 0.8),
        # assessments that disagree (of parts of the scene): the gravest, the group holds them all
        (
            'Pedestrian and car: {"risk_level": "critical", "risk_score": 0.92}. '
            'Parked cars: {"risk_level": "none", "risk_score": 0.02}',
            "critical",
            0.92,
        ),
    ],
)
def test_answers_that_parse(text: str, level: str, score: float) -> None:
    answer = parse_answer(text)
    assert (answer.risk_level, answer.risk_score) == (level, score)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "The scene looks fine to me.",
        "<html><body><h1>502 Bad Gateway</h1></body></html>",
        '{"risk_level": "high", "risk_score": 0.8',  # truncated
        '{"risk_level": "apocalyptic"}',
        '{"risk_score": 250}',
        '{"risk_score": "NaN"}',
        '{"risk_score": true}',
        '{"summary": "no level, no score"}',
    ],
)
def test_garbage_is_a_clear_error(text: str) -> None:
    with pytest.raises(UnparseableAnswer):
        parse_answer(text)


@given(st.text(max_size=400))
def test_any_text_parses_or_raises_unparseable(text: str) -> None:
    try:
        answer = parse_answer(text)
    except UnparseableAnswer:
        return
    assert 0 <= answer.risk_score <= 1
