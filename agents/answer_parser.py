"""Reading the VLM's answer: the JSON risk assessment the prompt asks for.

Models wrap JSON in code fences or prose, write ``"High"`` for ``"high"`` or a score of 80
for 0.8; this parser accepts those and nothing looser. Anything else raises
:class:`UnparseableAnswer`, which becomes a clear failed result rather than a guessed one.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

from streams.errors import UnparseableAnswer
from streams.records import RISK_LEVELS

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)
_LEVEL_SCORE = {"none": 0.05, "low": 0.25, "medium": 0.5, "high": 0.75, "critical": 0.95}


@dataclass(frozen=True)
class Assessment:
    """The parsed answer."""

    risk_level: str
    risk_score: float
    summary: str


def _json_objects(text: str) -> list[str]:
    """Candidate JSON objects: fenced blocks first, then every balanced {...} span."""
    candidates = [m.group(1).strip() for m in _FENCE.finditer(text)]
    depth, start = 0, -1
    in_string, escaped = False, False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if ch == '"':
            in_string = True
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                candidates.append(text[start : i + 1])
    return candidates


def _level_from_score(score: float) -> str:
    if score < 0.15:
        return "none"
    if score < 0.4:
        return "low"
    if score < 0.65:
        return "medium"
    if score < 0.85:
        return "high"
    return "critical"


def _unit_score(score: float, level: str | None, raw: object) -> float:
    """The score on 0..1. Models also answer on 0..10 (an 8 means 0.8) or in percent (80).

    Up to 10 a score is read on the 0..10 scale unless the percentage agrees with the level the
    model gave and the tenth does not; above 10 it is a percentage.
    """
    if 0 <= score < 1:
        return score
    if score == 1:  # 1 of 1, of 10 or of 100: read on the scale that agrees with the level given
        return _nearest(level, [1.0, 0.1, 0.01])
    if 1 < score <= 10:
        return _nearest(level, [score / 10.0, score / 100.0])
    if 10 < score <= 100:
        return score / 100.0
    raise UnparseableAnswer(f"risk_score {raw!r} outside 0..1 (nor on a 0..10 or 0..100 scale)")


def _nearest(level: str | None, readings: list[float]) -> float:
    """Of the readings of one score on different scales, the one whose level is nearest ``level``
    (the first on a tie, and without a level): {"low", 1} and {"low", 10} were read as a full
    score, and the graver of score and level made them critical alerts."""
    if level is None:
        return readings[0]
    want = RISK_LEVELS.index(level)
    return min(readings, key=lambda r: abs(RISK_LEVELS.index(_level_from_score(r)) - want))


def parse_answer(text: str) -> Assessment:
    """Parse the model's message content into an Assessment, or raise UnparseableAnswer."""
    if not text or not text.strip():
        raise UnparseableAnswer("empty answer")
    found: list[Assessment] = []
    problem: UnparseableAnswer | None = None
    for candidate in _json_objects(text):
        try:
            data = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(data, dict) and ("risk_level" in data or "risk_score" in data):
            try:  # a model may echo the prompt's template ("none|low|...") before its answer
                found.append(_from_dict(data))
            except UnparseableAnswer as exc:
                problem = problem or exc
    if not found:
        raise problem or UnparseableAnswer(f"no JSON risk assessment in answer: {text[:160]!r}")
    # several that disagree ("the pedestrian and the car: critical ... the parked cars: none"): the
    # gravest, for the group holds them all (a refusal would be a paid call with no answer)
    return max(found, key=lambda a: (RISK_LEVELS.index(a.risk_level), a.risk_score))


def _from_dict(data: dict[str, object]) -> Assessment:
    raw_level = data.get("risk_level")
    raw_score = data.get("risk_score")
    score: float | None = None
    if raw_score is not None:
        if isinstance(raw_score, bool) or not isinstance(raw_score, int | float | str):
            raise UnparseableAnswer(f"risk_score is not a number: {raw_score!r}")
        try:
            score = float(raw_score)
        except ValueError as exc:
            raise UnparseableAnswer(f"risk_score is not a number: {raw_score!r}") from exc
        if not math.isfinite(score):
            raise UnparseableAnswer(f"risk_score is not finite: {raw_score!r}")
    level: str | None = None
    if raw_level is not None:
        level = str(raw_level).strip().lower()
        if level not in RISK_LEVELS:
            raise UnparseableAnswer(f"risk_level {raw_level!r} not one of {RISK_LEVELS}")
    if score is not None:
        score = _unit_score(score, level, raw_score)
    if level is None and score is None:
        raise UnparseableAnswer("answer has neither risk_level nor risk_score")
    if level is not None and score is not None:
        by_score = _level_from_score(score)
        if RISK_LEVELS.index(by_score) > RISK_LEVELS.index(level) + 1:
            # "none" at 0.97: alerts go by the level, so the graver of the two stands
            level = by_score
        elif RISK_LEVELS.index(level) > RISK_LEVELS.index(by_score) + 1:
            score = _LEVEL_SCORE[level]
    if level is None and score is not None:
        level = _level_from_score(score)
    if score is None and level is not None:
        score = _LEVEL_SCORE[level]
    if level is None or score is None:  # unreachable: one of them was given
        raise UnparseableAnswer("answer has neither risk_level nor risk_score")
    summary = str(data.get("summary") or data.get("description") or "").strip()[:500]
    return Assessment(risk_level=level, risk_score=round(score, 4), summary=summary)
