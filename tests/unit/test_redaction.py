"""A store or broker URL's password never shows where we print: repr() and str() of the
configuration, parsed URLs, and the errors bad URLs raise."""

from __future__ import annotations

import pytest

from library.components.scheduling.task_scheduler import SchedulerConfig
from library.components.scheduling.task_scheduler._urls import parse_store_url, redact

PASSWORD = "S3cretPw"
STORE = f"postgresql://app:{PASSWORD}@db.internal:5432/myapp?schema=jobs"
BROKER = f"redis://:{PASSWORD}@cache:6379/0"


def test_repr_and_str_of_the_config_hide_the_passwords() -> None:
    config = SchedulerConfig(store=STORE, event_broker=BROKER)
    for shown in (repr(config), str(config), f"{config}", f"{config!r}", repr([config])):
        assert PASSWORD not in shown
        assert "store='postgresql://app:***@db.internal:5432/myapp?schema=jobs'" in shown
        assert "event_broker='redis://:***@cache:6379/0'" in shown
    assert config.store == STORE  # the value itself is kept: the store needs it
    assert config.model_dump()["event_broker"] == BROKER


def test_urls_without_a_password_are_shown_as_given() -> None:
    config = SchedulerConfig(store="sqlite:////var/lib/app/jobs.db")
    assert "store='sqlite:////var/lib/app/jobs.db'" in repr(config)
    assert "event_broker=None" in repr(config)
    assert redact("postgresql://app@db/myapp") == "postgresql://app@db/myapp"


def test_a_parsed_store_url_shows_only_its_display() -> None:
    store = parse_store_url(STORE)
    assert PASSWORD not in repr(store)
    assert store.display == "postgresql://app:***@db.internal:5432/myapp"
    assert PASSWORD in str(store.sqlalchemy_url)  # for the driver, never printed


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            f"postgresql://app:{PASSWORD}@h:99999/db",
            "invalid port in store 'postgresql://app:***@h:99999/db'",
        ),
        (f"postgresql://app:{PASSWORD}@h/db?sslmode=x", "unknown option 'sslmode'"),
        (f"mysql://app:{PASSWORD}@h/db", "unknown store 'mysql://app:***@h/db'"),
        (f"postgresql://app:{PASSWORD}@/db", "invalid postgresql store 'postgresql://app:***@/db'"),
    ],
)
def test_a_bad_store_url_is_named_without_its_password(url: str, shown: str) -> None:
    with pytest.raises(ValueError) as caught:
        SchedulerConfig(store=url)
    assert shown in str(caught.value)
    assert PASSWORD not in str(caught.value) and PASSWORD not in repr(caught.value)


def test_a_bad_broker_url_is_named_without_its_password() -> None:
    with pytest.raises(ValueError) as caught:
        SchedulerConfig(event_broker=f"amqp://guest:{PASSWORD}@mq:5672/")
    assert "unknown event broker 'amqp://guest:***@mq:5672/'" in str(caught.value)
    assert PASSWORD not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"postgresql://app:{PASSWORD}@db/x", "postgresql://app:***@db/x"),
        (f"postgresql://app:p@ss{PASSWORD}@db/x", "postgresql://app:***@db/x"),
        (f"redis://:{PASSWORD}@cache:6379/0", "redis://:***@cache:6379/0"),
        (f"postgresql://app:{PASSWORD}@[::1/x", "postgresql://***@[::1/x"),
        (None, "None"),
    ],
)
def test_redact(url: object, shown: str) -> None:
    assert redact(url) == shown
