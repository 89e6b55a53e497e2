"""deploy/: the Grafana dashboard and the Prometheus scrape example match what /metrics exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

from app.telemetry import metrics
from tests.support.server import REPO_ROOT

DEPLOY = Path(REPO_ROOT) / "deploy"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}


def exported_series() -> set[str]:
    """Every series name /metrics can show, from the service's own registry."""
    return {
        family.name + suffix
        for family in metrics.REGISTRY.collect()
        for suffix in SUFFIXES[family.type]
    }


def expressions(dashboard: dict[str, Any]) -> dict[str, list[str]]:
    return {
        panel["title"]: [target["expr"] for target in panel["targets"]]
        for panel in dashboard["panels"]
    }


def test_the_grafana_dashboard_uses_only_metrics_the_service_exports() -> None:
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    used = {
        name
        for exprs in expressions(dashboard).values()
        for expr in exprs
        for name in re.findall(r"\bbso_[a-z0-9_]+", expr)
    }
    assert used, "no bso metric in the dashboard"
    assert used <= exported_series(), used - exported_series()


def test_the_grafana_dashboard_has_the_panels_operators_need() -> None:
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    panels = expressions(dashboard)
    wanted = {
        "Request rate": "bso_http_requests_total",
        "p50 / p95": "bso_http_request_duration_seconds_bucket",
        "Errors": 'status=~"4..|5.."',
        "Trials dispatched by type": "sum by (type) (rate(bso_trials_dispatched_total",
        "Reports by outcome": "sum by (outcome) (rate(bso_reports_total",
        "Database errors": "bso_database_errors_total",
    }
    for title_part, expr_part in wanted.items():
        matching = [t for t in panels if title_part in t]
        assert matching, (title_part, list(panels))
        assert any(expr_part in e for t in matching for e in panels[t]), (title_part, panels)
    latency = next(exprs for title, exprs in panels.items() if "p50 / p95" in title)
    assert any("histogram_quantile(0.5," in e for e in latency)
    assert any("histogram_quantile(0.95," in e for e in latency)
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_the_prometheus_example_scrapes_metrics() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"]
