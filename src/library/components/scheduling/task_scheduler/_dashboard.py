"""The dashboard's files: one HTML page, a stylesheet and a script, shipped as package data.

The router serves them (``fastapi.py``); this module only reads them, once, and names the
stylesheet and the script after a hash of their content, so a browser may keep them for a
year: a new release has new names. The page itself is revalidated on every load (its ETag).
Plain HTML, CSS and JavaScript, nothing to build, and nothing fetched from anywhere else.
"""

from __future__ import annotations

import hashlib
import html
from dataclasses import dataclass, field
from functools import cache
from importlib.resources import files
from string import Template

_PACKAGE = __name__.rpartition(".")[0]
ASSET_DIR = "_static"
"""The package data directory (next to this module) holding the dashboard's files."""

PAGE_CACHE_CONTROL = "private, no-cache"
"""The page: behind the router's guard, so private; revalidated on each load (ETag)."""
ASSET_CACHE_CONTROL = "private, max-age=31536000, immutable"
"""The assets: their names carry their content's hash, so they never change under a name."""

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "img-src 'self' data:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
"""Only the router's own files and routes; no inline script; never framed (clickjacking)."""

PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": PAGE_CACHE_CONTROL,
}

_MEDIA_TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
}


@dataclass(frozen=True)
class Asset:
    """One file as served: its body, media type and ETag (a hash of the body)."""

    name: str
    body: bytes
    media_type: str
    etag: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "etag", f'"{hashlib.sha256(self.body).hexdigest()[:20]}"')


def _read(name: str) -> bytes:
    return files(_PACKAGE).joinpath(ASSET_DIR).joinpath(name).read_bytes()


def _hashed(name: str) -> Asset:
    body = _read(name)
    stem, dot, suffix = name.rpartition(".")
    digest = hashlib.sha256(body).hexdigest()[:12]
    return Asset(f"{stem}-{digest}{dot}{suffix}", body, _MEDIA_TYPES["." + suffix])


@cache
def assets() -> dict[str, Asset]:
    """The stylesheet and the script, by their hashed names (read once per process)."""
    found = (_hashed("dashboard.css"), _hashed("dashboard.js"))
    return {asset.name: asset for asset in found}


@cache
def page(timezone: str) -> Asset:
    """The HTML page for a scheduler in ``timezone`` (the zone its times are shown in)."""
    template = Template(_read("dashboard.html").decode("utf-8"))
    text = template.substitute(
        css=html.escape(_named(".css")),
        js=html.escape(_named(".js")),
        timezone=html.escape(timezone),
    )
    return Asset("dashboard.html", text.encode("utf-8"), "text/html; charset=utf-8")


def _named(suffix: str) -> str:
    (name,) = (name for name in assets() if name.endswith(suffix))
    return name
