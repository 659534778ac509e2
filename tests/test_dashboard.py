"""The baked Grafana dashboard: valid JSON that asks only for metrics the baked app exports."""

import ast
import json
import re
from pathlib import Path

from .test_bake import bake

REQUIRED_TITLES = (
    "Connections: used and idle against max",
    "Pending requests",
    "Connection wait time (p50, p95, p99)",
    "Timeouts per second",
    "Request rate by route and status",
    "Request latency p95 by route",
    "Connection use time p95",
)
# Labels Prometheus adds to every series it scrapes, and a histogram bucket's bound.
SCRAPE_LABELS = {"job", "instance"}
PROMQL_WORDS = {
    "sum", "by", "without", "rate", "irate", "increase", "histogram_quantile", "max", "min",
    "avg", "count", "label_values", "le",
}  # fmt: skip


def exported_series(metrics_py: Path) -> dict[str, set[str]]:
    """Each sample name metrics.py's collectors write, with its label names, by
    prometheus_client's rules: a counter's ``_total``, a histogram's ``_bucket`` (with
    ``le``), ``_sum`` and ``_count`` (``_created`` series are disabled there)."""
    series: dict[str, set[str]] = {}
    for node in ast.walk(ast.parse(metrics_py.read_text(encoding="utf-8"))):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            continue
        if node.func.id not in ("Gauge", "Counter", "Histogram"):
            continue
        name = ast.literal_eval(node.args[0])
        labels = set(ast.literal_eval(node.args[2]))
        if node.func.id == "Gauge":
            series[name] = labels
        elif node.func.id == "Counter":
            series[name.removesuffix("_total") + "_total"] = labels
        else:
            series[name + "_bucket"] = labels | {"le"}
            series[name + "_sum"] = series[name + "_count"] = labels
    assert "disable_created_metrics()" in metrics_py.read_text(encoding="utf-8")
    return series


def expressions(dashboard: dict) -> list[str]:
    found = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            found.append(variable["definition"])
    return found


def test_dashboard_asks_only_for_what_the_app_exports(cookies) -> None:
    project = bake(cookies, {})
    dashboard = json.loads((project / "grafana" / "dashboard.json").read_text(encoding="utf-8"))
    series = exported_series(project / "src" / "my_service" / "metrics.py")
    assert "db_client_connection_timeouts_total" in series
    assert series["db_client_connection_count"] == {"pool_name", "state"}

    assert dashboard["schemaVersion"] >= 36
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["pool_name"]["type"] == "query"
    titles = [panel["title"] for panel in dashboard["panels"]]
    for title in REQUIRED_TITLES:
        assert title in titles
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert len(panel["description"]) > 80, panel["title"]
        assert panel["targets"], panel["title"]
    descriptions = " ".join(panel["description"] for panel in dashboard["panels"])
    for advice in ("POOL_SIZE", "add workers", "slow queries", "PgBouncer"):
        assert advice in descriptions

    for expr in expressions(dashboard):
        # Every selector's metric name, and the label names it filters or groups by.
        expr_names = set(re.findall(r"[a-z_][a-z0-9_]*", re.sub(r'"[^"]*"|\[[^\]]*\]', "", expr)))
        metrics = {name for name in expr_names if name in series}
        assert metrics, f"no exported metric in {expr}"
        allowed = set().union(*(series[name] for name in metrics)) | SCRAPE_LABELS
        unknown = expr_names - metrics - allowed - PROMQL_WORDS
        assert not unknown, f"{expr} names {unknown}: neither exported metrics nor their labels"
        for p in re.findall(r"histogram_quantile\(([^,]+),", expr):
            assert 0 < float(p) < 1
        assert "histogram_quantile" not in expr or "_bucket" in expr
    every = " ".join(expressions(dashboard))
    for name in (
        "db_client_connection_count", "db_client_connection_max",
        "db_client_connection_pending_requests", "db_client_connection_timeouts_total",
        "db_client_connection_wait_time_seconds_bucket",
        "db_client_connection_use_time_seconds_bucket",
        "http_server_request_duration_seconds_bucket",
        "http_server_request_duration_seconds_count",
    ):  # fmt: skip
        assert name in every


def test_without_metrics_there_is_no_dashboard(cookies) -> None:
    project = bake(cookies, {"metrics": False})

    assert not (project / "grafana").exists()
    assert "grafana" not in (project / "README.md").read_text(encoding="utf-8").lower()
