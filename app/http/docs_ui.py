"""/docs (Swagger UI) and /redoc (ReDoc) served from the package, and /static.

FastAPI's default pages load their JavaScript, CSS and fonts from CDNs, so on
a cluster without internet access they are blank. These pages use the copies
vendored under app/static/vendor/ (scripts/vendor_assets.sh) and reference no
other host. ``create_app`` passes ``docs_url=None, redoc_url=None`` and
installs these instead.
"""

from __future__ import annotations

from html import escape

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC_PREFIX = "/static"
FAVICON = f"{STATIC_PREFIX}/favicon.svg"

docs = APIRouter(include_in_schema=False)


def root_path(request: Request) -> str:
    """The mount prefix behind a proxy ('' when served at the root)."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def static_url(request: Request, path: str) -> str:
    """A same-origin URL of a file under app/static/."""
    return f"{root_path(request)}{STATIC_PREFIX}/{path}"


def install_static(app: FastAPI) -> None:
    """Serve app/static/ (vendored assets, the dashboard's CSS and JS) at /static."""
    app.mount(STATIC_PREFIX, StaticFiles(packages=[("app", "static")]), name="static")


@docs.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI: try the API from the browser."""
    return get_swagger_ui_html(
        openapi_url=root_path(request) + request.app.openapi_url,
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=static_url(request, "vendor/swagger-ui/swagger-ui-bundle.js"),
        swagger_css_url=static_url(request, "vendor/swagger-ui/swagger-ui.css"),
        swagger_favicon_url=root_path(request) + FAVICON,
        # The validator badge would send the spec to validator.swagger.io.
        swagger_ui_parameters={"validatorUrl": None},
    )


@docs.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    """ReDoc: the API reference, with its fonts from the package (not Google's)."""
    spec_url = escape(root_path(request) + request.app.openapi_url)
    title = escape(f"{request.app.title} - ReDoc")
    fonts = escape(static_url(request, "vendor/fonts/fonts.css"))
    script = escape(static_url(request, "vendor/redoc/redoc.standalone.js"))
    favicon = escape(root_path(request) + FAVICON)
    return HTMLResponse(f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="icon" href="{favicon}" type="image/svg+xml">
<link rel="stylesheet" href="{fonts}">
<style>body {{ margin: 0; padding: 0; }}</style>
</head>
<body>
<redoc spec-url="{spec_url}"></redoc>
<script src="{script}"></script>
</body>
</html>
""")
