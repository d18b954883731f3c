"""bench/cache_compare.py and bench/plot_cache.py without the servers: the
pieces that turn runs into the published table, JSON and plots.

The plot tests need matplotlib (pip install -r bench/requirements.txt): CI
installs it and fails without it; elsewhere they skip without it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest


def require_matplotlib():
    """The plots need matplotlib: CI installs it (ci/requirements-test.txt),
    so there its absence fails; elsewhere the test skips."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("matplotlib is not installed (ci/requirements-test.txt lists it)")
        pytest.skip("matplotlib is not installed (pip install -r bench/requirements.txt)")


BENCH = Path(__file__).resolve().parent.parent / "bench"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cc():
    return load("cache_compare")


def run_metrics(ops: float, cpu: float, p50: float = 100.0) -> dict:
    return {"ops_per_sec": ops, "p50_us": p50, "p90_us": 2 * p50, "p99_us": 3 * p50,
            "p999_us": 4 * p50, "cpu_us_per_req": cpu, "rq_wait_us_per_req": 0.5,
            "conns_per_sec": 0.0, "connect_p50_us": 0, "connect_p99_us": 0}


def test_merge_histograms_adds_counts_bucket_by_bucket(cc):
    merged = cc.merge_histograms([[[1, 2], [5, 1]], [[1, 3], [3, 4]], []])
    assert merged == [[1, 5], [3, 4], [5, 1]]


def test_dumps_keeps_the_data_and_puts_each_histogram_on_one_line(cc):
    data = {"a": {"latency_histogram": [[1, 2], [30, 400]], "x": [1.5, 2]}, "n": None,
            "b": [{"latency_histogram": []}]}
    text = cc.dumps(data)
    assert json.loads(text) == data
    assert '"latency_histogram": [[1,2],[30,400]]' in text
    assert '"latency_histogram": []' in text
    assert '"x": [\n' in text             # everything else stays indented


def test_scenarios_filter_matches_words_of_names_and_refuses_nothing(cc):
    assert list(cc.select("churn")) == ["connection churn, reconnect every 10"]
    chosen = cc.select("OPEN LOOP, 500 kb")
    assert set(chosen) == {"open loop 20k/s, 1:10, 100 B", "500 KB values, 1:10"}
    assert cc.select(None) == cc.SCENARIOS
    with pytest.raises(SystemExit):
        cc.select("no such scenario")


def test_every_scenario_reads_a_preloaded_key_set_and_reports_known_metrics(cc):
    for name, sc in cc.SCENARIOS.items():
        assert sc["data_size"] in cc.KEY_SETS, name
        for metric in sc.get("report", ()):
            assert metric in cc.METRICS, (name, metric)
    assert cc.CHURN_BASELINE in cc.SCENARIOS


def test_summary_takes_medians_ratios_and_the_churn_cost_per_connection(cc):
    churn = "connection churn, reconnect every 10"
    scenarios = {n: cc.SCENARIOS[n] for n in (cc.CHURN_BASELINE, churn)}
    results = {
        cc.CHURN_BASELINE: {"memcached": [run_metrics(100, 10), run_metrics(300, 12),
                                          run_metrics(200, 11)],
                            "pinstack-cache": [run_metrics(400, 8)] * 3},
        churn: {"memcached": [run_metrics(50, 20)] * 3,
                "pinstack-cache": [run_metrics(50, 13)] * 3},
    }
    histograms = {n: {s: [[[10, 1]], [[10, 2], [20, 1]]] for s in ("memcached", "pinstack-cache")}
                  for n in scenarios}
    summary = cc.summarize(scenarios, results, histograms)
    base = summary[cc.CHURN_BASELINE]
    assert base["memcached"]["ops_per_sec"] == 200          # the median round
    assert base["ratio"]["ops_per_sec"] == 2.0
    assert base["memcached"]["latency_histogram"] == [[10, 3], [20, 1]]
    assert "cpu_us_per_conn" not in base["memcached"]
    # (20 - 11) us/req more than without churn, 10 requests per connection
    assert summary[churn]["memcached"]["cpu_us_per_conn"] == pytest.approx(90)
    assert summary[churn]["pinstack-cache"]["cpu_us_per_conn"] == pytest.approx(50)
    assert summary[churn]["ratio"]["cpu_us_per_conn"] == pytest.approx(50 / 90)


def test_plots_are_written_from_the_json(cc, tmp_path):
    require_matplotlib()
    plot_cache = load("plot_cache")
    scenarios = {n: cc.SCENARIOS[n] for n in list(cc.SCENARIOS)[:2]}
    results = {n: {s: [run_metrics(1000 * (i + 1), 5)] for s in ("memcached", "pinstack-cache")}
               for i, n in enumerate(scenarios)}
    histograms = {n: {s: [[[10, 5], [20, 4], [400, 1]]] for s in ("memcached", "pinstack-cache")}
                  for n in scenarios}
    data = {"summary": cc.summarize(scenarios, results, histograms), "command": "test",
            "machine": {"cpus": 2}, "server_flags": ["-t", "1"]}
    path = tmp_path / "cc.json"
    path.write_text(cc.dumps(data))
    pngs = plot_cache.plot(path, tmp_path / "out")
    assert [p.name for p in pngs] == ["cache_throughput.png", "cache_latency_cdf.png"]
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stat().st_size > 10_000


def test_cdf_points_end_below_one_for_the_logit_axis():
    require_matplotlib()
    plot_cache = load("plot_cache")
    xs, ys = plot_cache.cdf_points([[0, 1], [10, 1], [20, 2]])
    assert xs == [1, 10, 20]           # 0 us drawn at 1 us on the log axis
    assert ys[:2] == [0.25, 0.5]
    assert ys[-1] < 1
