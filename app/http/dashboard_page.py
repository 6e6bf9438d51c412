"""`/dashboard`: the live dashboard page (issue 13 item 5), a static HTML page with its assets.

The page is plain HTML, vanilla JavaScript and CSS shipped in the package
(`app/http/static/dashboard/`, no CDN, no build step). It signs in with a token the person pastes
(kept in the tab's sessionStorage), reads the JSON API with it, and follows the live monitor
WebSocket (`{"type": "auth"}` first, then a filter). Nothing here needs a token: the page holds no
data of its own, and `/dashboard/phases.json` lists only the built-in contract types' phase order
(so the page knows which phase a guarded contract confirms into).
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

from app.domain.phases import CONTRACT_TYPES

STATIC: Final = Path(__file__).parent / "static" / "dashboard"
ASSETS: Final = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
# The page talks only to its own origin; inline scripts and styles are refused.
HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(tags=["dashboard page"], include_in_schema=False)


@router.get("/dashboard")
def dashboard_page() -> FileResponse:
    """The dashboard page itself."""
    return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8", headers=HEADERS)


@router.get("/favicon.ico")
def favicon() -> FileResponse:
    """The page's icon, shipped with the package; served at the root, where browsers ask for
    it on any page of this origin (the API docs too), so none of them logs a 404."""
    return FileResponse(
        STATIC / "favicon.ico",
        media_type="image/x-icon",
        headers={**HEADERS, "Cache-Control": "max-age=86400"},
    )


@router.get("/dashboard/phases.json")
def phase_orders() -> dict[str, list[str]]:
    """Each built-in contract type's phases, in order (a contract's own phases come with it)."""
    return {name: config.phase_ids() for name, config in sorted(CONTRACT_TYPES.items())}


@router.get("/dashboard/{asset}")
def dashboard_asset(asset: str) -> FileResponse:
    """The page's script and stylesheet; any other name answers 404."""
    media_type = ASSETS.get(asset)
    if media_type is None:
        raise HTTPException(status_code=404, detail="no such dashboard asset")
    return FileResponse(STATIC / asset, media_type=media_type, headers=HEADERS)


__all__ = ["router"]
