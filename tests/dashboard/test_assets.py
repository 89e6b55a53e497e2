"""The vendored browser assets: shipped in the package, licensed, and local-only."""

from __future__ import annotations

import glob
import re
import tomllib
from pathlib import Path

APP = Path(__file__).resolve().parents[2] / "app"
REPO = APP.parent
VENDOR = APP / "static" / "vendor"


def test_every_static_file_and_template_is_package_data() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["app"]
    shipped = {
        Path(match)
        for pattern in patterns
        for match in glob.glob(pattern, root_dir=APP, recursive=True)
        if (APP / match).is_file()
    }
    wanted = {
        p.relative_to(APP)
        for folder in (APP / "static", APP / "dashboard" / "templates")
        for p in folder.rglob("*")
        if p.is_file()
    }
    assert wanted - shipped == set()


def test_each_vendored_package_carries_its_licence_and_its_pinned_version() -> None:
    for folder in ("swagger-ui", "redoc", "chartjs", "fonts"):
        names = [p.name for p in (VENDOR / folder).iterdir()]
        assert any(n.startswith("LICENSE") for n in names), folder
    script = (REPO / "scripts" / "vendor_assets.sh").read_text()
    versions = (VENDOR / "VERSIONS").read_text()
    for variable, package in (
        ("SWAGGER_UI_VERSION", "swagger-ui-dist"),
        ("REDOC_VERSION", "redoc"),
        ("CHARTJS_VERSION", "chart.js"),
    ):
        match = re.search(rf'^{variable}="([^"]+)"', script, re.MULTILINE)
        assert match is not None, variable
        assert f"{package} {match.group(1)} " in versions


def test_redoc_no_longer_names_its_cdn_and_no_stylesheet_loads_from_another_host() -> None:
    assert "cdn.redoc.ly" not in (VENDOR / "redoc" / "redoc.standalone.js").read_text()
    for css in (APP / "static").rglob("*.css"):
        for url in re.findall(r"url\(\s*['\"]?([^'\")]+)", css.read_text()):
            assert url.startswith(("data:", "./")) or not re.match(r"\w+:|//", url), (css, url)
