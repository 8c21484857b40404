"""Instruction following, IFEval-style (Zhou et al. 2023): each prompt row carries verifiable
constraints, checked programmatically on the response; a response's score is the fraction of its
prompt's constraints it meets (README "Probe suites" lists every rule).

A constraint is a mapping `{"type": ..., <argument>: ...}` in the row's `constraints` list. The rules
are deliberately plain (regular expressions, no parser) so that a user can predict each verdict:
- words: maximal runs of letters/digits, inner apostrophes and hyphens kept ("don't", "well-known" = 1);
- sentences: the text split after `.`, `!` or `?` followed by whitespace or the end; empty pieces dropped;
- list items: lines starting with `-`, `*`, `•` or `N.` / `N)` after optional indentation.
"""

from __future__ import annotations

import re
from typing import Callable

from policyshift.errors import ConstraintError  # noqa: F401 (defined in errors.py; old import path)

_WORD = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_LIST_ITEM = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+\S", re.MULTILINE)


def count_words(text: str) -> int:
    return len(_WORD.findall(text))


def count_sentences(text: str) -> int:
    return sum(1 for piece in _SENTENCE_END.split(text.strip()) if _WORD.search(piece))


def count_list_items(text: str) -> int:
    return len(_LIST_ITEM.findall(text))


def _has_word_sequence(text: str, phrase: str) -> bool:
    """`phrase` as whole words, case-insensitive ("cat" is not in "category")."""
    return re.search(r"(?<![^\W_])" + re.escape(phrase.lower()) + r"(?![^\W_])", text.lower()) is not None


def _normalized(text: str) -> str:
    return " ".join(text.split()).lower()


# type -> (argument name, argument type, check(response, argument) -> bool)
RULES: dict[str, tuple[str | None, type | None, Callable]] = {
    "max_words": ("n", int, lambda r, n: count_words(r) <= n),
    "min_words": ("n", int, lambda r, n: count_words(r) >= n),
    "max_sentences": ("n", int, lambda r, n: count_sentences(r) <= n),
    "min_sentences": ("n", int, lambda r, n: count_sentences(r) >= n),
    "contains": ("keyword", str, lambda r, k: _has_word_sequence(r, k)),
    "not_contains": ("keyword", str, lambda r, k: not _has_word_sequence(r, k)),
    "starts_with": ("phrase", str, lambda r, p: _normalized(r).startswith(_normalized(p))),
    "ends_with": ("phrase", str, lambda r, p: _normalized(r).endswith(_normalized(p))),
    "lowercase": (None, None, lambda r, _: any(c.isalpha() for c in r) and r == r.lower()),
    "no_commas": (None, None, lambda r, _: "," not in r),
    "list_items": ("n", int, lambda r, n: count_list_items(r) == n),
}


def check_constraint(response: str, constraint: dict) -> bool:
    if not isinstance(constraint, dict) or constraint.get("type") not in RULES:
        kind = constraint.get("type") if isinstance(constraint, dict) else constraint
        raise ConstraintError(f"unknown constraint {kind!r}; known types: {', '.join(RULES)}")
    arg_name, arg_type, check = RULES[constraint["type"]]
    value = None
    if arg_name is not None:
        value = constraint.get(arg_name)
        if not isinstance(value, arg_type) or isinstance(value, bool) or (arg_type is str and not value.strip()):
            raise ConstraintError(f"constraint {constraint['type']} needs '{arg_name}' ({arg_type.__name__}); got {value!r}")
    return bool(check(response, value))


def constraint_score(response: str, constraints: list[dict]) -> float:
    """Fraction of `constraints` that `response` meets."""
    if not isinstance(constraints, list) or not constraints:
        raise ConstraintError(f"an instruction-following prompt row needs a non-empty 'constraints' list; got {constraints!r}")
    return sum(check_constraint(response, c) for c in constraints) / len(constraints)


def instruction_scorer(prompts: list[str], responses: list[str], constraints: list | None = None) -> list[float]:
    """The built-in `instructions` probe scorer: the rows' `constraints` field, one list per prompt."""
    if constraints is None:
        raise ConstraintError("the instructions scorer reads a 'constraints' field in each prompt row; the prompts file has none")
    return [constraint_score(r, c) for r, c in zip(responses, constraints)]
