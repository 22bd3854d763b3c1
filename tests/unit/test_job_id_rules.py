"""The job id rule, and what an unknown id's JobNotFoundError suggests (no engine)."""

from __future__ import annotations

import pickle
import re

import pytest

from library.components.scheduling.task_scheduler import (
    InvalidTypeError,
    InvalidValueError,
    JobNotFoundError,
)
from library.components.scheduling.task_scheduler._jobs import is_valid_job_id, validate_job_id
from library.components.scheduling.task_scheduler._registry import close_ids

RULE = "ids are 1-200 printable characters without '/' (and not '.' or '..')"

VALID_IDS = [
    "heartbeat",
    "__main__:heartbeat",
    "pkg.mod:Class.method",
    "mod:f.<locals>.g",
    "mod:<lambda>",
    "nightly report (v2)",
    "a:b.c-d_e~f+g=h?i#j&k%l;m@n!o*p'q\"r\\s",
    "ünïcödé 日本語 🙂",
    " leading and trailing ",
    "...",
    ".hidden",
    "x" * 200,
]


@pytest.mark.parametrize("job_id", VALID_IDS)
def test_valid_ids(job_id: str) -> None:
    assert is_valid_job_id(job_id)
    assert validate_job_id(job_id) == job_id


@pytest.mark.parametrize(
    ("job_id", "shown"),
    [
        ("", "''"),
        ("reports/daily", "'reports/daily'"),
        ("/", "'/'"),
        (".", "'.'"),
        ("..", "'..'"),
        ("a\x00b", "'a\\x00b'"),
        ("line\nbreak", "'line\\nbreak'"),
        ("tab\there", "'tab\\there'"),
        ("bell\x07", "'bell\\x07'"),
        ("del\x7f", "'del\\x7f'"),
        ("para\u2029graph", "'para\\u2029graph'"),
        ("lone \ud800 surrogate", "'lone \\ud800 surrogate'"),
        ("x" * 201, repr("x" * 200) + "... (201 characters)"),
    ],
)
def test_invalid_ids_are_named_with_the_rule(job_id: str, shown: str) -> None:
    assert not is_valid_job_id(job_id)
    with pytest.raises(InvalidValueError) as info:
        validate_job_id(job_id)
    assert str(info.value) == f"invalid job id {shown}: {RULE}"


def test_a_huge_id_is_cut_in_the_message() -> None:
    with pytest.raises(InvalidValueError) as info:
        validate_job_id("y" * 100_000)
    assert str(info.value) == f"invalid job id {'y' * 200!r}... (100000 characters): {RULE}"


def test_an_invalid_default_id_says_to_pass_an_id() -> None:
    with pytest.raises(InvalidValueError) as info:
        validate_job_id("mod:" + "f" * 300, default=True)
    assert str(info.value).endswith(
        "... (304 characters) (the default id, from the function's module and name): "
        f"pass id=...; {RULE}"
    )


@pytest.mark.parametrize("job_id", [5, None, b"bytes", ["a"]])
def test_ids_that_are_not_strings(job_id: object) -> None:
    with pytest.raises(
        InvalidTypeError, match=re.escape(f"job id must be a string, got {job_id!r}; {RULE}")
    ):
        validate_job_id(job_id)


# ---------------------------------------------------------------------------- suggestions

KNOWN = [
    "__main__:heartbeat",
    "pkg.mod:Class.method",
    "mod:f.<locals>.g",
    "nightly",
    "tick",
    "reports:weekly_report",
]


@pytest.mark.parametrize(
    ("wanted", "suggested"),
    [
        ("heartbeat", ["__main__:heartbeat"]),  # the name after ':'
        ("app:heartbeat", ["__main__:heartbeat"]),  # another module (python app.py vs uvicorn)
        ("HeartBeat", ["__main__:heartbeat"]),  # any case
        ("heartbeet", ["__main__:heartbeat"]),  # close to the name
        ("__main__:heartbaet", ["__main__:heartbeat"]),  # close to the whole id
        ("method", ["pkg.mod:Class.method"]),  # the last part of a qualname
        ("Class.method", ["pkg.mod:Class.method"]),
        ("g", ["mod:f.<locals>.g"]),
        ("nightyl", ["nightly"]),
        ("weekly-report", ["reports:weekly_report"]),
        ("tock", ["tick"]),
        ("nope", []),
        ("", []),
        ("heartbeat" * 30, []),  # longer than any valid id
    ],
)
def test_close_ids(wanted: str, suggested: list[str]) -> None:
    assert close_ids(wanted, KNOWN) == suggested


def test_at_most_three_suggestions_same_names_first() -> None:
    known = [f"mod{index}:sync" for index in range(6)] + ["sync2"]
    assert close_ids("sync", known) == ["mod0:sync", "mod1:sync", "mod2:sync"]
    assert close_ids("sync", ["sync2", "mod:sync"]) == ["mod:sync", "sync2"]


def test_many_jobs_get_only_same_name_suggestions() -> None:
    known = [f"mod:job_{index}" for index in range(5000)] + ["app:heartbeat"]
    assert close_ids("heartbeat", known) == ["app:heartbeat"]
    assert close_ids("job_1x", known) == []  # no fuzzy matching among this many


@pytest.mark.parametrize(
    ("suggestions", "message"),
    [
        ((), "no job with id 'heartbeat'"),
        (("__main__:heartbeat",), "no job with id 'heartbeat'; did you mean '__main__:heartbeat'?"),
        (
            ("a:heartbeat", "b:heartbeat"),
            "no job with id 'heartbeat'; did you mean 'a:heartbeat' or 'b:heartbeat'?",
        ),
        (
            ("a:heartbeat", "b:heartbeat", "heartbeats"),
            "no job with id 'heartbeat'; did you mean 'a:heartbeat', 'b:heartbeat' or "
            "'heartbeats'?",
        ),
    ],
)
def test_job_not_found_error_message(suggestions: tuple[str, ...], message: str) -> None:
    error = JobNotFoundError("heartbeat", suggestions)
    assert str(error) == message
    assert error.job_id == "heartbeat"
    assert error.suggestions == suggestions
    assert isinstance(error, LookupError)


def test_job_not_found_error_cuts_a_huge_id() -> None:
    error = JobNotFoundError("z" * 5000)
    assert str(error) == f"no job with id {'z' * 200!r}... (5000 characters)"
    assert error.job_id == "z" * 5000


def test_job_not_found_error_pickles_as_it_was_made() -> None:
    error = JobNotFoundError("heartbeat", ("__main__:heartbeat",))
    copy = pickle.loads(pickle.dumps(error))
    assert (str(copy), copy.job_id, copy.suggestions) == (
        str(error),
        "heartbeat",
        ("__main__:heartbeat",),
    )
