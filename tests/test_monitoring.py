"""deploy/monitoring against the real thing: Debian's Prometheus and promtool.

The alert rules pass `promtool check rules` and their unit tests (`promtool test rules
alerts.test.yml`: each alert fires on the series that should fire it and stays quiet on the
others), and the PrometheusRule holds the same groups. A real Prometheus then scrapes a real
worker and `runner serve` every second while jobs succeed, fail, run and wait, and answers
the questions an operator asks in PromQL; every dashboard query and every alert rule runs on
that data without error, and every series they name is one the runner exports.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support import stop
from tests.support.fleet import API, ApiClient, free_port, metrics_config, start_serve, status, wait_for

ROOT = Path(__file__).resolve().parent.parent
MONITORING = ROOT / "deploy" / "monitoring"
NO_PROMTOOL = shutil.which("promtool") is None
NEEDS_PROMTOOL = pytest.mark.skipif(NO_PROMTOOL, reason="promtool is not installed (scripts/services.sh installs Debian's "
                                    "prometheus package)")
NEEDS_PROMETHEUS = pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus is not installed "
                                      "(scripts/services.sh installs Debian's prometheus package)")
#: what the issue asks the shipped rules to cover
REQUIRED_ALERTS = {"RunnerQueueBackingUp", "RunnerNoWorkers", "RunnerJobFailureRate", "RunnerDeliveriesGivingUp",
                   "RunnerWorkerNotReady"}
#: Grafana's variables, as a query of the dashboard would be sent with "All" chosen
GRAFANA_VARIABLES = {"$executor": ".*", "$__rate_interval": "15s"}


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"] for rule in group["rules"]]


def dashboard_queries() -> list[str]:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def grafana_expanded(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a Grafana variable this test does not know: {expr}"
    return expr


def series_named(expr: str) -> set[str]:
    """The runner's metric families a query reads (histogram and counter suffixes as exported)."""
    return set(re.findall(r"\brunner_[a-z_]+\b", expr))


# -- the rules, offline -------------------------------------------------------------------------
@NEEDS_PROMTOOL
def test_alert_rules_pass_promtool_and_their_unit_tests():
    checked = subprocess.run(["promtool", "check", "rules", "alerts.yml"], cwd=MONITORING, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0 and f"SUCCESS: {len(rules())} rules found" in checked.stdout, checked.stdout + checked.stderr
    tested = subprocess.run(["promtool", "test", "rules", "alerts.test.yml"], cwd=MONITORING, capture_output=True, text=True,
                            timeout=120)
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


@NEEDS_PROMTOOL
def test_the_rule_tests_catch_a_rule_that_never_fires(tmp_path):
    """The unit tests assert firing, not just syntax: a rule whose threshold can never be met fails them."""
    broken = (MONITORING / "alerts.yml").read_text().replace("expr: runner_worker_ready == 0", "expr: runner_worker_ready == 7")
    assert broken != (MONITORING / "alerts.yml").read_text()
    (tmp_path / "alerts.yml").write_text(broken)
    shutil.copy(MONITORING / "alerts.test.yml", tmp_path)
    tested = subprocess.run(["promtool", "test", "rules", "alerts.test.yml"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert tested.returncode != 0 and "RunnerWorkerNotReady" in tested.stdout + tested.stderr


def test_every_alert_is_tested_firing_with_a_severity_and_texts():
    cases = yaml.safe_load((MONITORING / "alerts.test.yml").read_text())["tests"]
    fired = {check["alertname"] for case in cases for check in case["alert_rule_test"] if check["exp_alerts"]}
    quiet = {check["alertname"] for case in cases for check in case["alert_rule_test"] if not check["exp_alerts"]}
    names = [rule["alert"] for rule in rules()]
    assert len(names) == len(set(names)) and REQUIRED_ALERTS <= set(names)
    assert fired == set(names), "every alert has a case in which it fires"
    assert len(quiet) >= 5, "and most have one in which it stays quiet"
    for rule in rules():
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_prometheusrule_holds_exactly_the_alert_rules():
    [rule] = [d for d in yaml.safe_load_all((MONITORING / "prometheusrule.yaml").read_text()) if d]
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"] == yaml.safe_load((MONITORING / "alerts.yml").read_text()), \
        "edit alerts.yml, then copy its groups into prometheusrule.yaml"


# -- a real Prometheus ----------------------------------------------------------------------------
class Prometheus:
    """Debian's prometheus on a spare loopback port, with a config and data folder of the test's own."""

    def __init__(self, workdir: Path, targets: dict[str, str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                  "rule_files": [str(MONITORING / "alerts.yml")],
                  "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]} for job, target in targets.items()]}
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = workdir / "prometheus.log"
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: status(f"{self.url}/-/ready") == 200 or self.proc.poll() is not None, 30, "prometheus ready")
        assert self.proc.poll() is None, self.log.read_text()[-2000:]

    def query(self, expr: str) -> list[dict]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
        return body["data"]["result"]

    def value(self, expr: str) -> float | None:
        """The single value of `expr` now, or None when it returns nothing."""
        result = self.query(expr)
        assert len(result) <= 1, f"{expr}: {result}"
        return float(result[0]["value"][1]) if result else None

    def by(self, label: str, expr: str) -> dict[str, float]:
        return {r["metric"].get(label, ""): float(r["value"][1]) for r in self.query(expr)}

    def stop(self) -> None:
        stop(self.proc)


@NEEDS_PROMETHEUS
def test_a_real_prometheus_answers_the_operators_questions(make_harness, tmp_path):
    worker_port = free_port()
    h = make_harness(default_executor="fake", executors={"fake": {"enabled": True}}, api=API,
                     worker={**metrics_config(worker_port), "concurrency": 2})
    h.worker_proc = h.start_worker("--queues", f"{h.config['worker']['namespace']}.fake")
    serve = start_serve(h)
    client = ApiClient(serve.url)
    long_jobs: list[str] = []
    prometheus = Prometheus(tmp_path, {"runner-worker": f"127.0.0.1:{worker_port}", "runner-serve": serve.url.removeprefix("http://")})
    try:
        wait_for(lambda: prometheus.by("job", "up") == {"runner-worker": 1, "runner-serve": 1}, 20, "both targets scraped")
        # a baseline sample of every series before anything happens: what increase() needs
        wait_for(lambda: (prometheus.value('count_over_time(runner_job_failures_total{kind="build"}[1m])') or 0) >= 2, 20,
                 "two scrapes of the failure counters at 0")

        def job(**args: str) -> str:
            return client.submit({"tags": [f"{h.registry()}/fleet/prom:{uuid.uuid4().hex[:6]}"], "build_args": args})

        ok, failed = job(FAKE_SLEEP="0.2"), job(FAKE_EXIT="3")
        wait_for(lambda: client.record(ok)["status"] == "succeeded" and client.record(failed)["status"] == "failed", 30,
                 "one job to succeed and one to fail")
        long_jobs += [job(FAKE_SLEEP="120") for _ in range(3)]  # two run (concurrency 2), one waits
        wait_for(lambda: [client.record(j)["status"] for j in long_jobs].count("running") == 2, 30, "two long jobs running")

        wait_for(lambda: prometheus.value("max(runner_queue_length)") == 1
                 and prometheus.value("sum(runner_jobs_running)") == 2
                 and (prometheus.value('sum(runner_jobs_total{status="failed"})') or 0) == 1, 20, "Prometheus to see it all")
        wait_for(lambda: prometheus.value("sum(increase(runner_job_failures_total[1m]))") is not None, 5, "a later scrape")
        # job rate by status
        rates = prometheus.by("status", "sum by (status) (rate(runner_jobs_total[1m]))")
        assert rates["succeeded"] > 0 and rates["failed"] > 0 and rates["cancelled"] == 0 == rates["timed_out"]
        # failures by kind after one failure: the series was there at 0, so the one failure shows
        assert set(prometheus.by("kind", "increase(runner_job_failures_total[1m]) > 0")) == {"build"}
        assert prometheus.value('increase(runner_job_failures_total{kind="build"}[1m])') >= 1
        # p95 job duration: the one job that succeeded slept 0.2 s (its bucket starts above 0.1 s)
        p95 = prometheus.value('histogram_quantile(0.95, sum by (le) (rate(runner_job_duration_seconds_bucket{status="succeeded"}[1m])))')
        assert 0.1 < p95 < 60
        # queue length (runner serve, from Redis) and utilisation (the workers' running over their slots)
        assert prometheus.value('max(runner_queue_length{executor="fake"})') == 1
        assert prometheus.value("sum(runner_jobs_running) / sum(runner_worker_build_slots)") == 1.0
        assert prometheus.value("count by (version) (runner_build_info)") == 2  # a worker and runner serve
        assert prometheus.value('sum(runner_http_requests_total{route="/v1/jobs",method="POST",status="2xx"})') == 5
        assert prometheus.value('sum(increase(runner_job_phase_seconds_count{phase="context"}[1m]))') > 0

        # every dashboard query and every alert runs on real data; every series they read exists
        exported = {r["metric"]["__name__"] for r in prometheus.query('group by (__name__) ({__name__=~"runner_.+"})')}
        for expr in dashboard_queries():
            prometheus.query(grafana_expanded(expr))
            assert series_named(expr) <= exported, expr
        for rule in rules():
            assert series_named(rule["expr"]) <= exported, rule["alert"]
        evaluated = httpx.get(f"{prometheus.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
        assert {r["name"]: (r["health"], r.get("lastError", "")) for g in evaluated for r in g["rules"]} == \
            {rule["alert"]: ("ok", "") for rule in rules()}
    finally:
        prometheus.stop()
        for job_id in long_jobs:
            h.cli("cancel", job_id)
        client.close()
        serve.stop()
