"""The interactive documentation, served entirely by this process: no CDN, works offline.

FastAPI's default `/docs` and `/redoc` pages load Swagger UI and ReDoc from a CDN, which a
machine without internet access (or a locked-down network) cannot reach. The assets come
from the pinned `fastapi-offline` package instead and are served under `/docs-assets`.
`GET /` points a person who opens the base URL to these pages.
"""

from __future__ import annotations

from typing import Final

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

from app.schemas import ServiceIndex

ASSETS: Final = "/docs-assets"
_ASSETS_PACKAGE: Final = ("fastapi_offline", "static")

router = APIRouter(tags=["service"])


def _root_path(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


@router.get("/", summary="Where to start")
def index(request: Request) -> ServiceIndex:
    """Links to the interactive documentation, the OpenAPI schema and the probes."""
    root = _root_path(request)
    return ServiceIndex(
        name=request.app.title,
        docs=f"{root}/docs",
        redoc=f"{root}/redoc",
        openapi=f"{root}{request.app.openapi_url}",
        health=f"{root}/healthz",
        ready=f"{root}/readyz",
    )


@router.get("/docs", include_in_schema=False)
def swagger_ui(request: Request) -> HTMLResponse:
    root = _root_path(request)
    return get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{root}{ASSETS}/favicon.png",
    )


@router.get("/redoc", include_in_schema=False)
def redoc(request: Request) -> HTMLResponse:
    root = _root_path(request)
    return get_redoc_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{root}{ASSETS}/redoc.standalone.js",
        redoc_favicon_url=f"{root}{ASSETS}/favicon.png",
        with_google_fonts=False,
    )


def install_docs(application: FastAPI) -> None:
    """Serve the pages and their assets; the app must be built with docs_url=None, redoc_url=None."""
    application.mount(ASSETS, StaticFiles(packages=[_ASSETS_PACKAGE]), name="docs-assets")
    application.include_router(router)


__all__ = ["ASSETS", "install_docs"]
