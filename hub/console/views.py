"""Rendering for the console: the Jinja2 environment, its filters, and the headers every page carries."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from starlette.responses import HTMLResponse

from hub.console.auth import Session

SECURITY_HEADERS = {
    # Scripts only from our own static file; pygal's SVG carries its own <style>, hence 'unsafe-inline' styles.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

_env = Environment(
    loader=PackageLoader("hub.console", "templates"),
    autoescape=select_autoescape(["html"]),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "never"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso(epoch: float) -> str:
    """ISO 8601 in UTC, to the millisecond (the CSV's times)."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


def _ago(epoch: float | None, now: float | None = None) -> str:
    if epoch is None:
        return "never"
    seconds = max(0.0, (time.time() if now is None else now) - epoch)
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.0f} days ago"


def _number(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if float(value).is_integer() and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:.{digits}g}"


def _short_image(image: str) -> str:
    """``repo@sha256:abcdef012345…``: enough of the digest to tell releases apart."""
    repo, sep, digest = image.partition("@")
    if sep and digest.startswith("sha256:"):
        return f"{repo}@sha256:{digest[7:19]}…"
    if image.startswith("sha256:"):
        return f"sha256:{image[7:19]}…"
    return image


_env.filters.update(when=_when, ago=_ago, number=_number, short_image=_short_image)


def render(
    template: str,
    *,
    session: Session | None,
    status: int = 200,
    message: str | None = None,
    error: str | None = None,
    **context: Any,
) -> HTMLResponse:
    """A page (or a fragment: a template whose name starts with ``_``) with the console's headers."""
    html = _env.get_template(template).render(
        session=session, csrf=session.csrf if session else "", message=message, error=error, **context
    )
    return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)
