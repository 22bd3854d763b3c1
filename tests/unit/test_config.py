from __future__ import annotations

import pytest
from pydantic import ValidationError

from library.components.scheduling.task_scheduler import JobDefaults, SchedulerConfig


def test_defaults() -> None:
    config = SchedulerConfig()
    assert config.timezone == "UTC"
    assert config.job_defaults == JobDefaults(
        coalesce=True, max_instances=1, misfire_grace_time=None, timeout=None
    )
    assert config.max_concurrent_jobs == 100
    assert config.shutdown_timeout == 25


def test_seed_configuration_is_accepted_as_a_dict() -> None:
    config = SchedulerConfig(
        timezone="America/New_York",
        job_defaults={"coalesce": True, "max_instances": 3, "misfire_grace_time": 60},
    )
    assert config.job_defaults.max_instances == 3
    assert config.job_defaults.misfire_grace_time == 60
    assert config.tzinfo.key == "America/New_York"


def test_unknown_job_defaults_key_names_it_and_the_valid_keys() -> None:
    with pytest.raises(ValueError) as info:
        SchedulerConfig(job_defaults={"max_instance": 3})
    message = str(info.value)
    assert "'max_instance'" in message
    assert "max_instances" in message and "misfire_grace_time" in message


def test_unknown_timezone_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"unknown timezone 'Mars/Olympus'.*IANA"):
        SchedulerConfig(timezone="Mars/Olympus")


@pytest.mark.parametrize(
    ("key", "value"),
    [("max_instances", 0), ("misfire_grace_time", -1), ("timeout", 0), ("retries", -1)],
)
def test_out_of_range_job_defaults_are_rejected(key: str, value: float) -> None:
    with pytest.raises(ValidationError, match=key):
        SchedulerConfig(job_defaults={key: value})


def test_config_is_frozen() -> None:
    config = SchedulerConfig()
    with pytest.raises(ValidationError):
        config.timezone = "Europe/London"  # type: ignore[misc]


def test_namespace_defaults_to_default_and_is_checked() -> None:
    assert SchedulerConfig().namespace == "default"
    assert SchedulerConfig(namespace="billing.v2:eu-1").namespace == "billing.v2:eu-1"
    for bad in ["", "has space", "x" * 65, "slash/es"]:
        with pytest.raises(ValueError, match=r"invalid namespace .*letters, digits"):
            SchedulerConfig(namespace=bad)
