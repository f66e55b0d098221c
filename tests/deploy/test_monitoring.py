"""Monitoring in the prod overlay (deploy/k8s/overlays/prod/monitoring), checked offline.

The PodMonitor must reach every service's /metrics with the token it asks
for; every PromQL expression, in the alerts and in the Grafana dashboard, must
parse (promql-parser) and use only series the services export
(common/platform/metrics.py, with the suffixes prometheus-client adds), labels
they carry, and label values they can take. A rule or panel that names a
metric the services do not export fails here rather than staying silent in
production. The CRD schemas are checked by test_kubernetes.py.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import promql_parser as promql
from prometheus_client import Counter, Gauge, Histogram, Summary

from common.contracts.messages import ErrorCode, RunStatus, Service, StepKind, StepStatus
from common.platform import metrics
from common.platform.config import Settings
from common.platform.supervision import STALE_AFTER
from services.history.service import Recorder
from services.trigger.mute_ends import INTERVAL_SECONDS as MUTE_ENDS_SECONDS
from services.trigger.service import SCHEDULER_TICK_SECONDS
from tests.deploy.test_kubernetes import ROOT, Doc, crd_errors, deployments, of_kind, one, rendered, selects

MONITORING = ROOT / "deploy" / "k8s" / "overlays" / "prod" / "monitoring"
README = ROOT / "README.md"

#: Labels the Prometheus Operator puts on every series a PodMonitor scrapes
#: (a ServiceMonitor adds "service" too), and the one Prometheus adds itself.
OPERATOR_TARGET_LABELS = {
    "PodMonitor": {"namespace", "pod", "container", "endpoint", "job", "instance"},
    "ServiceMonitor": {"namespace", "pod", "container", "endpoint", "job", "instance", "service"},
}
#: Series Prometheus makes for every target, not exported by the services.
PROMETHEUS_SERIES = {"up": set[str]()}
SEVERITIES = {"warning", "critical"}
#: Grafana's own variables, and a stand-in range for them when parsing.
GRAFANA_RANGES = ("$__rate_interval", "$__interval", "$__range")


# --- what the services export -------------------------------------------------


@dataclass(frozen=True)
class Series:
    name: str
    labels: frozenset[str]
    #: Whether rate() and increase() apply: a counter, or a histogram's _bucket, _count or _sum.
    counter: bool


def exported() -> dict[str, Series]:
    """Every series name the services' registry can export, with its labels."""
    found: dict[str, Series] = {}
    for collector in vars(metrics).values():
        if not isinstance(collector, Counter | Gauge | Histogram | Summary):
            continue
        (family,) = collector.describe()
        # prometheus-client keeps a collector's label names only in this attribute.
        labels = frozenset(collector._labelnames)
        if isinstance(collector, Counter):
            suffixes = {"_total": True, "_created": False}
        elif isinstance(collector, Histogram):
            suffixes = {"_bucket": True, "_count": True, "_sum": True, "_created": False}
        elif isinstance(collector, Summary):
            suffixes = {"_count": True, "_sum": True, "_created": False}
        else:
            suffixes = {"": False}
        for suffix, counter in suffixes.items():
            extra = {"le"} if suffix == "_bucket" else set()
            found[family.name + suffix] = Series(family.name + suffix, labels | extra, counter)
    return found


def families() -> set[str]:
    """The metric names of the registry, before prometheus-client's suffixes."""
    return {
        collector.describe()[0].name
        for collector in vars(metrics).values()
        if isinstance(collector, Counter | Gauge | Histogram | Summary)
    }


def loop_names() -> dict[str, str]:
    """Each supervised loop and consumer the services run, with the component running it."""
    found: dict[str, str] = {}
    for path in (ROOT / "services").rglob("*.py"):
        for name in re.findall(r"\bloops\.(?:loop|consumer)\(\s*\"([a-z_]+)\"", path.read_text()):
            found[name] = path.relative_to(ROOT / "services").parts[0].replace("_", "-")
    return found


def allowed_values() -> dict[tuple[str, str], set[str]]:
    """The values a label of a series can take, where they are bounded by an enum."""
    loops = set(loop_names())
    values: dict[tuple[str, str], set[str]] = {}
    for name in exported():
        if name.startswith("adxflow_runs_"):
            values[(name, "status")] = {status.value for status in RunStatus if status.terminal}
        if name.startswith("adxflow_step_duration_seconds"):
            values[(name, "status")] = {status.value for status in StepStatus if status.terminal}
            values[(name, "service")] = {service.value for service in Service}
        if name.startswith(("adxflow_step_duration_seconds", "adxflow_step_retries", "adxflow_dead_letters")):
            values[(name, "kind")] = {kind.value for kind in StepKind}
        if name.startswith(("adxflow_step_retries", "adxflow_dead_letters")):
            values[(name, "code")] = {code.value for code in ErrorCode}
        if name.startswith("adxflow_loop_"):
            values[(name, "loop")] = loops
    values[("up", "job")] = {"adxflow"}
    values[("up", "component")] = {service.value.replace("_", "-") for service in Service}
    return values


# --- checking PromQL -------------------------------------------------------------


def children(node: Any) -> list[Any]:
    """*node* and every node under it."""
    found: list[Any] = []
    promql.walk(node, found.append)
    return found


def selectors(node: Any) -> list[Any]:
    return [child for child in children(node) if isinstance(child, promql.VectorSelector)]


def name_of(selector: Any) -> str | None:
    if selector.name:
        return str(selector.name)
    for matcher in selector.matchers.matchers:
        if matcher.name == "__name__" and matcher.op == promql.MatchOp.Equal:
            return str(matcher.value)
    return None


@dataclass
class Checker:
    """What is wrong with a PromQL expression, given the series and target labels that exist."""

    target_labels: set[str]
    series: dict[str, Series] = field(default_factory=exported)
    values: dict[tuple[str, str], set[str]] = field(default_factory=allowed_values)

    def labels_of(self, name: str | None) -> set[str]:
        if name in PROMETHEUS_SERIES:
            return PROMETHEUS_SERIES[name] | self.target_labels
        known = self.series.get(name or "")
        return (set(known.labels) if known else set()) | self.target_labels

    def problems(self, expr: str) -> list[str]:
        try:
            tree = promql.parse(expr)
        except ValueError as error:
            return [f"does not parse: {error}"]
        found: list[str] = []
        for selector in selectors(tree):
            name = name_of(selector)
            if name is None:
                found.append(f"{selector}: no metric name")
                continue
            if name not in self.series and name not in PROMETHEUS_SERIES:
                found.append(f"{name}: not a series the services export")
                continue
            for matcher in selector.matchers.matchers:
                if matcher.name == "__name__":
                    continue
                if matcher.name not in self.labels_of(name):
                    found.append(f"{name}: no label {matcher.name}")
                allowed = self.values.get((name, matcher.name))
                if (
                    allowed is not None
                    and matcher.op == promql.MatchOp.Equal
                    and matcher.value not in allowed
                ):
                    found.append(f"{name}: {matcher.name}={matcher.value!r} is not one of {sorted(allowed)}")
        for node in children(tree):
            found += self.node_problems(node)
        return found

    def node_problems(self, node: Any) -> list[str]:
        found: list[str] = []
        if isinstance(node, promql.AggregateExpr) and node.modifier is not None:
            available = set().union(*(self.labels_of(name_of(s)) for s in selectors(node.expr)))
            found += [
                f"{node}: groups by {label}, which no series has"
                for label in node.modifier.labels
                if label not in available
            ]
        if (
            isinstance(node, promql.BinaryExpr)
            and node.modifier is not None
            and node.modifier.matching is not None
        ):
            available = set().union(*(self.labels_of(name_of(s)) for s in selectors(node)))
            found += [
                f"{node}: matches on {label}, which no series has"
                for label in node.modifier.matching.labels
                if label not in available
            ]
        if isinstance(node, promql.Call) and node.func.name in {"rate", "increase", "irate"}:
            for selector in selectors(node):
                known = self.series.get(name_of(selector) or "")
                if known is not None and not known.counter:
                    found.append(f"{node.func.name}() of {known.name}, which is not a counter")
        if isinstance(node, promql.Call) and node.func.name == "histogram_quantile":
            inner = node.args[1]
            if not any(str(name_of(s)).endswith("_bucket") for s in selectors(inner)):
                found.append(f"{node}: histogram_quantile() of no _bucket series")
            if isinstance(inner, promql.AggregateExpr) and (
                inner.modifier is None
                or inner.modifier.type != promql.AggModifierType.By
                or "le" not in inner.modifier.labels
            ):
                found.append(f"{node}: the buckets are summed without keeping le")
        return found


# --- the rendered monitoring resources -------------------------------------------


def prod() -> tuple[Doc, ...]:
    return rendered("prod")


def pod_monitor() -> Doc:
    return one(prod(), "PodMonitor")


def target_labels(monitor: Doc) -> set[str]:
    labels = set(OPERATOR_TARGET_LABELS[monitor["kind"]])
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        labels |= {
            relabel["targetLabel"] for relabel in endpoint.get("relabelings", []) if "targetLabel" in relabel
        }
    labels |= {re.sub(r"[^a-zA-Z0-9_]", "_", label) for label in monitor["spec"].get("podTargetLabels", [])}
    return labels


def checker() -> Checker:
    return Checker(target_labels(pod_monitor()))


def alert_rules() -> list[Doc]:
    (rules,) = of_kind(prod(), "PrometheusRule")
    return [rule for group in rules["spec"]["groups"] for rule in group["rules"]]


def dashboard_map() -> Doc:
    maps = [
        doc
        for doc in of_kind(prod(), "ConfigMap")
        if doc["metadata"].get("labels", {}).get("grafana_dashboard")
    ]
    assert len(maps) == 1, "expected one ConfigMap labelled grafana_dashboard"
    return maps[0]


def dashboard() -> Doc:
    (text,) = dashboard_map()["data"].values()
    loaded: Doc = json.loads(text)
    return loaded


def panels(board: Doc) -> list[Doc]:
    found: list[Doc] = []
    for panel in board["panels"]:
        found.append(panel)
        found += panel.get("panels", [])
    return found


def grafana_expr(expr: str) -> str:
    """A dashboard's expression as Prometheus would get it, Grafana's variables filled in."""
    for name in GRAFANA_RANGES:
        expr = expr.replace(name, "5m")
    return re.sub(r"\$\{?(\w+)\}?", r"\1", expr)


def dashboard_exprs(board: Doc) -> list[tuple[str, str]]:
    """(where, expression) of every query: panels' targets and the variables' label_values()."""
    found = [
        (f"panel {panel['title']!r} {target['refId']}", target["expr"])
        for panel in panels(board)
        for target in panel.get("targets", [])
    ]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"]
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
            assert match, f"variable {variable['name']}: {query}"
            found.append((f"variable {variable['name']}", match.group(1)))
    return found


# --- scraping --------------------------------------------------------------------


def test_one_pod_monitor_scrapes_every_service_with_the_api_token() -> None:
    docs = prod()
    monitor = pod_monitor()
    assert not of_kind(docs, "ServiceMonitor")
    spec = monitor["spec"]
    (endpoint,) = spec["podMetricsEndpoints"]
    assert endpoint["path"] == "/metrics"
    credentials = endpoint["authorization"]["credentials"]
    for name, deployment in deployments(docs).items():
        template = deployment["spec"]["template"]
        assert selects(spec["selector"], template["metadata"]["labels"]), f"{name} is not scraped"
        (container,) = template["spec"]["containers"]
        ports = {port["name"]: port for port in container["ports"]}
        # The port the probes use is the one serving /metrics.
        assert endpoint["port"] in ports, name
        assert container["readinessProbe"]["httpGet"]["port"] == endpoint["port"], name
        token = {item["name"]: item for item in container["env"]}["ADXFLOW_API_TOKEN"]
        assert token["valueFrom"]["secretKeyRef"] == {
            "name": credentials["name"],
            "key": credentials["key"],
        }, name
        # The rules select the services' series by this job, taken from the pods' labels.
        assert template["metadata"]["labels"][spec["jobLabel"]] == "adxflow", name
    assert endpoint["authorization"].get("type", "Bearer") == "Bearer"
    assert monitor["metadata"]["namespace"] == one(docs, "Namespace")["metadata"]["name"]


def test_scrape_labels_do_not_rename_the_services_own_labels() -> None:
    # Prometheus renames a scraped label that a target label also has (to exported_<name>):
    # the rules and the dashboard would then look for a label that is not there.
    own = set().union(*(series.labels for series in exported().values())) - {"le"}
    monitor = pod_monitor()
    assert "component" in target_labels(monitor)
    assert not own & target_labels(monitor)
    # Why not a ServiceMonitor: its "service" label is adxflow_step_duration_seconds' own.
    assert own & target_labels({**monitor, "kind": "ServiceMonitor"}) == {"service"}


def test_dev_has_no_monitoring_resources() -> None:
    # A development cluster need not run the Prometheus Operator: its kinds would not apply.
    kinds = {doc["kind"] for doc in rendered("dev")}
    assert not kinds & {"PodMonitor", "ServiceMonitor", "PrometheusRule"}
    assert not [
        doc
        for doc in of_kind(rendered("dev"), "ConfigMap")
        if "grafana_dashboard" in doc["metadata"].get("labels", {})
    ]


def test_the_crd_validators_reject_broken_monitoring_resources() -> None:
    monitor = copy.deepcopy(pod_monitor())
    monitor["spec"]["podMetricsEndpoints"][0]["ports"] = monitor["spec"]["podMetricsEndpoints"][0].pop("port")
    assert any("ports" in error for error in crd_errors(monitor))

    (rules,) = copy.deepcopy(of_kind(prod(), "PrometheusRule"))
    rule = rules["spec"]["groups"][0]["rules"][0]
    rule["expression"] = rule.pop("expr")
    errors = crd_errors(rules)
    assert any("expr" in error for error in errors), errors


# --- alerts ----------------------------------------------------------------------


def readme_sections() -> dict[str, str]:
    """README sections by their anchor (as GitHub makes them), with their text up to the next heading."""
    sections: dict[str, str] = {}
    anchor = None
    fenced = False
    for line in README.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        heading = None if fenced else re.match(r"#+ (.+)", line)
        if heading:
            anchor = re.sub(r"[^a-z0-9 -]", "", heading.group(1).lower()).replace(" ", "-")
            sections[anchor] = ""
        elif anchor is not None:
            sections[anchor] += line + "\n"
    return sections


def test_every_alert_says_how_bad_what_and_where_to_look() -> None:
    rules = alert_rules()
    assert rules
    sections = readme_sections()
    check = checker()
    seen: set[tuple[str, str]] = set()
    for rule in rules:
        name = rule["alert"]
        assert re.fullmatch(r"Adxflow[A-Z][A-Za-z]+", name), name
        key = (name, rule.get("labels", {}).get("loop", ""))
        assert key not in seen, f"{key} twice"
        seen.add(key)
        assert rule["labels"]["severity"] in SEVERITIES, name
        annotations = rule["annotations"]
        assert annotations["summary"].strip(), name
        assert annotations["description"].strip(), name
        # Templates name only labels the expression's result can carry.
        for label in re.findall(r"\$labels\.(\w+)", annotations["summary"] + annotations["description"]):
            assert label in set(rule["labels"]) | result_labels(rule["expr"], check), f"{name}: {label}"
        page, _, anchor = annotations["runbook_url"].partition("#")
        assert (ROOT / page).resolve() == README, name
        assert anchor in sections, f"{name}: no README section #{anchor}"
        assert name in sections[anchor], f"{name} is not explained in README #{anchor}"


def result_labels(expr: str, check: Checker) -> set[str]:
    """Labels the result of an expression keeps: those of its outermost aggregation, or all."""
    tree = promql.parse(expr)
    aggregations = [node for node in children(tree) if isinstance(node, promql.AggregateExpr)]
    labels: set[str] = set()
    for node in aggregations:
        if node.modifier is not None and node.modifier.type == promql.AggModifierType.By:
            labels |= set(node.modifier.labels)
    if not aggregations:
        labels |= set().union(*(check.labels_of(name_of(s)) for s in selectors(tree)))
    return labels


def test_every_alert_expression_uses_only_what_the_services_export() -> None:
    check = checker()
    problems = {
        f"{rule['alert']} {rule.get('labels', {}).get('loop', '')}": check.problems(rule["expr"])
        for rule in alert_rules()
    }
    assert not {where: found for where, found in problems.items() if found}


def test_the_alerts_the_deployment_promises_watch_their_metrics() -> None:
    uses: dict[str, set[str]] = {}
    for rule in alert_rules():
        uses.setdefault(rule["alert"], set()).update(
            name_of(s) or "" for s in selectors(promql.parse(rule["expr"]))
        )
    assert "adxflow_runs_total" in uses["AdxflowRunsFailing"]
    assert 'status="failed"' in next(r["expr"] for r in alert_rules() if r["alert"] == "AdxflowRunsFailing")
    assert "adxflow_dead_letters_total" in uses["AdxflowDeadLettersGrowing"]
    assert "adxflow_scheduler_lateness_seconds_bucket" in uses["AdxflowSchedulerLate"]
    assert "adxflow_loop_ticks_total" in uses["AdxflowLoopNotTicking"]
    assert "adxflow_loop_failures_total" in uses["AdxflowLoopFailing"]


def loop_intervals() -> dict[str, float]:
    """Each loop's interval with the deployed settings' defaults, as its supervision sees it."""
    settings = Settings.model_construct()
    recorder = SimpleNamespace(runtime=SimpleNamespace(settings=settings))
    recorder.quiet_for = Recorder.quiet_for.fget(recorder)
    return {
        "scheduler": max(settings.scheduler_poll_seconds, SCHEDULER_TICK_SECONDS),
        "stall_watcher": Recorder.stall_check_seconds.fget(recorder),
        "retention": settings.retention_interval_seconds,
        "scope_retention": settings.retention_interval_seconds,
        "alert_retention": settings.retention_interval_seconds,
        "mute_window_ends": MUTE_ENDS_SECONDS,
    }


def test_every_loop_has_a_not_ticking_alert_over_three_of_its_intervals() -> None:
    loops = loop_names()
    # The chainer is a consumer: it ticks per message, so a quiet one is not a stuck one.
    consumers = {"chainer"}
    assert set(loops) - consumers == set(loop_intervals()), "a loop without a known interval"
    rules = {
        rule["labels"]["loop"]: rule for rule in alert_rules() if rule["alert"] == "AdxflowLoopNotTicking"
    }
    assert set(rules) == set(loops) - consumers
    for loop, interval in loop_intervals().items():
        tree = promql.parse(rules[loop]["expr"])
        windows = [node.range for node in children(tree) if isinstance(node, promql.MatrixSelector)]
        offsets = [s.offset for s in selectors(tree) if s.offset]
        assert windows, loop
        assert offsets, loop
        # Readiness calls a loop stale after STALE_AFTER intervals; the alert waits at least as long.
        assert min(windows) >= dt.timedelta(seconds=STALE_AFTER * interval), loop
        assert {offset.total_seconds() for offset in offsets} == {
            window.total_seconds() for window in windows
        }, loop
        for selector in selectors(tree):
            if name_of(selector) == "adxflow_loop_ticks_total":
                assert {m.value for m in selector.matchers.matchers if m.name == "loop"} == {loop}
        components = {
            m.value
            for s in selectors(tree)
            for m in s.matchers.matchers
            if name_of(s) == "up" and m.name == "component"
        }
        assert components == {loops[loop]}, loop


def test_the_expression_check_catches_what_the_services_do_not_export() -> None:
    check = checker()
    assert not check.problems('sum by (flow) (increase(adxflow_runs_total{status="failed"}[1h]))')
    # prometheus-client adds _total to a counter's name.
    assert check.problems("rate(adxflow_runs[5m])")
    assert check.problems("rate(adxflow_emails_total[5m])")
    # A histogram is its _bucket, _count and _sum series.
    assert check.problems("rate(adxflow_kusto_query_duration_seconds[5m])")
    assert check.problems('adxflow_runs_total{flow_name="x"}')
    assert check.problems('adxflow_runs_total{status="error"}')
    assert check.problems('adxflow_loop_ticks_total{loop="sheduler"}')
    assert check.problems("sum by (connection) (rate(adxflow_runs_total[5m]))")
    assert check.problems("rate(adxflow_kusto_query_duration_seconds_bucket[5m]")
    assert check.problems(
        "histogram_quantile(0.9, sum by (kind) (rate(adxflow_step_duration_seconds_bucket[5m])))"
    )
    assert check.problems("a unless on (podname) up")


# --- the dashboard ---------------------------------------------------------------


def test_the_dashboard_is_a_config_map_for_grafanas_sidecar() -> None:
    config_map = dashboard_map()
    # No hash suffix: the sidecar would load each renamed copy as another dashboard.
    assert config_map["metadata"]["name"] == "adxflow-grafana-dashboard"
    ((key, text),) = config_map["data"].items()
    assert key.endswith(".json")
    # kubectl apply keeps the whole object in an annotation, which holds at most 256 KiB.
    assert len(json.dumps(config_map).encode()) < 256 * 1024
    assert json.loads(text) == json.loads((MONITORING / "dashboard.json").read_text(encoding="utf-8"))


def test_the_dashboard_is_well_formed() -> None:
    board = dashboard()
    assert 1 <= len(board["uid"]) <= 40
    assert board["title"]
    assert isinstance(board["schemaVersion"], int)
    variables = {variable["name"] for variable in board["templating"]["list"]}
    assert "datasource" in variables
    ids = [panel["id"] for panel in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    cells: set[tuple[int, int]] = set()
    for panel in panels(board):
        grid = panel["gridPos"]
        assert 0 <= grid["x"] < grid["x"] + grid["w"] <= 24, panel["title"]
        area = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            used = set(re.findall(r"\$\{?(\w+)", target["expr"])) - {
                name.lstrip("$") for name in GRAFANA_RANGES
            }
            assert used <= variables, f"{panel['title']}: undefined variables {used - variables}"


def test_every_dashboard_query_uses_only_what_the_services_export() -> None:
    check = checker()
    problems = {where: check.problems(grafana_expr(expr)) for where, expr in dashboard_exprs(dashboard())}
    assert not {where: found for where, found in problems.items() if found}


def test_the_dashboard_shows_every_metric_the_services_export() -> None:
    shown = {
        name_of(s)
        for _, expr in dashboard_exprs(dashboard())
        for s in selectors(promql.parse(grafana_expr(expr)))
    }
    names = {series.name for series in exported().values()}
    for family in families():
        assert {name for name in names if name.startswith(family)} & shown, (
            f"{family} is on no panel of {MONITORING / 'dashboard.json'}"
        )
    # Step durations as p50 and p95, runs by status.
    quantiles = {
        str(node.args[0])
        for _, expr in dashboard_exprs(dashboard())
        for node in children(promql.parse(grafana_expr(expr)))
        if isinstance(node, promql.Call)
        and node.func.name == "histogram_quantile"
        and "adxflow_step_duration_seconds_bucket" in {name_of(s) for s in selectors(node)}
    }
    assert {"0.5", "0.95"} <= quantiles
    assert any(
        "sum by (status)" in expr and "adxflow_runs_total" in expr for _, expr in dashboard_exprs(dashboard())
    )


def test_the_dashboard_check_catches_a_missing_metric() -> None:
    board = copy.deepcopy(dashboard())
    target = next(panel for panel in panels(board) if panel.get("targets"))["targets"][0]
    target["expr"] = "sum(rate(adxflow_emails_sent[5m]))"
    check = checker()
    assert any(check.problems(grafana_expr(expr)) for _, expr in dashboard_exprs(board))


def test_the_readme_explains_every_alert_and_the_monitoring_files() -> None:
    section = readme_sections()["monitoring"]
    for name in {rule["alert"] for rule in alert_rules()}:
        assert name in section, name
    for path in MONITORING.iterdir():
        assert path.name in section or path.name == "kustomization.yaml", path.name
