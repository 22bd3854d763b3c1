"""Store and event broker URLs: parsed and checked once, passwords kept out of messages.

``memory://`` (one process, nothing survives it), ``sqlite:///path/to/jobs.db`` (one process,
survives restarts), ``postgresql://user@host:port/db[?schema=name]`` (several processes or
hosts); event brokers: ``redis://host:port/db``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import SplitResult, parse_qs, urlsplit, urlunsplit

from ._errors import InvalidValueError

StoreKind = Literal["memory", "sqlite", "postgresql"]

STORE_FORMS = "memory://, sqlite:///path/to/jobs.db or postgresql://user@host:port/db"


@dataclass(frozen=True)
class StoreURL:
    """A parsed store URL."""

    kind: StoreKind
    url: str = field(repr=False)
    """The URL as given (with its password: never printed, see ``display``)."""
    sqlalchemy_url: str | None = field(repr=False)
    """The SQLAlchemy URL with its async driver, for SQL stores (with the password)."""
    display: str
    """The URL without its password, for messages and logs."""
    schema: str | None = None
    """PostgreSQL schema (``?schema=name``) holding the tables; default: the search path."""


def without_password(parts: SplitResult) -> str:
    """The URL of ``parts`` with its password (if any) replaced by ``***``."""
    if parts.password is None:
        return urlunsplit(parts)
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def redact(url: object) -> str:
    """Any URL (or other value) as it may be printed: its password, if any, as ``***``."""
    if not isinstance(url, str):
        return repr(url)
    try:
        parts = urlsplit(url)
    except ValueError:  # unparseable: shown without anything before an @
        return _without_credentials(url)
    if parts.password is None:
        return url  # as given (urlunsplit would turn sqlite://// into sqlite://)
    return without_password(parts)


def _without_credentials(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "***" if "@" in url else url
    netloc, slash, path = rest.partition("/")
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    return f"{scheme}://{netloc}{slash}{path}"


def parse_store_url(url: str) -> StoreURL:
    """Parse and check a store URL; a ValueError names the URL and the valid forms."""
    if not isinstance(url, str):
        raise InvalidValueError(f"store must be a URL string ({STORE_FORMS}), got {url!r}")
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0].lower()
    if scheme == "memory" and not (parts.netloc or parts.path):
        return StoreURL("memory", url, None, url)
    if scheme == "sqlite":
        path = parts.path
        if parts.netloc or not path.startswith("/") or len(path) < 2 or path == "/:memory:":
            raise InvalidValueError(
                f"invalid sqlite store {url!r}: use sqlite:///relative/jobs.db or "
                f"sqlite:////absolute/jobs.db (for no file at all, use memory://)"
            )
        return StoreURL("sqlite", url, f"sqlite+aiosqlite://{path}", url)
    if scheme in ("postgresql", "postgres"):
        if not parts.hostname or not parts.path.strip("/"):
            raise InvalidValueError(
                f"invalid postgresql store {without_password(parts)!r}: use "
                f"postgresql://user@host:port/database"
            )
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise InvalidValueError(f"invalid port in store {without_password(parts)!r}") from None
        query = parse_qs(parts.query)
        unknown = sorted(set(query) - {"schema"})
        if unknown:
            raise InvalidValueError(
                f"unknown option {unknown[0]!r} in store {without_password(parts)!r}; valid: schema"
            )
        schema = query.get("schema", [None])[-1]
        if schema is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", schema):
            raise InvalidValueError(f"invalid schema name {schema!r}: use letters, digits and _")
        bare = parts._replace(scheme="postgresql+asyncpg", query="")
        return StoreURL(
            "postgresql",
            url,
            urlunsplit(bare),
            without_password(parts._replace(query="")),
            schema,
        )
    raise InvalidValueError(f"unknown store {without_password(parts)!r}: use {STORE_FORMS}")


def parse_broker_url(url: str) -> str:
    """Check an event broker URL (only Redis is configurable); return it."""
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("redis", "rediss") or not parts.hostname:
        shown = without_password(parts) if parts is not None else repr(url)
        raise InvalidValueError(f"unknown event broker {shown!r}: use redis://host:port/db")
    return url
