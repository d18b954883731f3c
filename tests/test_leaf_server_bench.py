"""A smoke test of bench/leaf_server_compare.py (pinstack-leaf's server
against tantivy over a real corpus): it runs the script with --quick and
checks its JSON, so that the script cannot rot. It checks the shape of the
results and that every figure is there and positive, not how fast anything
is: bench/README.md has the figures of a full run.

Needs tantivy (PyPI) and the corpus's Debian packages, dict-gcide and
wordnet-base (ci/install-deps.sh installs all of them): skipped without
them, except in CI, where their absence is a failure.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from helpers import run_quick_bench

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from leaf_real_corpus import GCIDE_DICT, GCIDE_INDEX, QUERY_KINDS, WORDNET_DIR  # noqa: E402

IN_CI = os.environ.get("CI", "").lower() == "true"

# Every metric the script must report for both sides.
EXPECTED_METRICS = [
    "ingest HTTP, until visible",
    "ingest HTTP, until acked",
    "ingest vs tantivy in-process bulk",
    "ingest server cpu",
    "server RSS after ingest",
    *(f"{what} {p}, HTTP" for what in ("visible (write sent ->)", "ack -> visible")
      for p in ("p50", "p99", "max")),
    "write acked p50, HTTP",
    "write acked p99, HTTP",
    *(f"visible vs tantivy in-process {p}" for p in ("p50", "p99", "max")),
    *(f"qps {kind}, top10 {order}" for kind in QUERY_KINDS for order in ("score", "bm25")),
]


def _require(what: str, ok: bool, how: str) -> None:
    if not ok:
        if IN_CI:
            pytest.fail(f"{what} is missing ({how}; ci/install-deps.sh installs it)")
        pytest.skip(f"{what} is missing ({how})")


def test_leaf_server_compare_quick(tmp_path):
    try:
        import tantivy  # noqa: F401
        have_tantivy = True
    except ImportError:
        have_tantivy = False
    _require("tantivy", have_tantivy, "pip install tantivy")
    _require("the dict-gcide package", os.path.exists(GCIDE_DICT) and
             os.path.exists(GCIDE_INDEX), "apt-get install dict-gcide")
    _require("the wordnet-base package", os.path.exists(os.path.join(WORDNET_DIR, "data.noun")),
             "apt-get install wordnet-base")
    result = run_quick_bench("leaf_server_compare.py", tmp_path, timeout=600)

    metrics = result["metrics"]
    missing = [name for name in EXPECTED_METRICS if name not in metrics]
    assert not missing, missing
    for name in EXPECTED_METRICS:
        m = metrics[name]
        assert m["ours"] is not None and m["tantivy"] is not None, (name, m)
        if name.startswith("ack -> visible"):   # clamped at 0: a search can beat the ack
            assert m["ours"] >= 0 and m["tantivy"] >= 0, (name, m)
        else:
            assert m["ours"] > 0 and m["tantivy"] > 0 and m["ratio"] > 0, (name, m)
        assert m["better"] in ("higher", "lower"), (name, m)

    for key in ("cpu_model", "cpus", "kernel", "python", "tantivy", "loadavg_start"):
        assert result["machine"][key] is not None, key
    corpus = result["corpus"]
    assert corpus["docs"] == 3000
    assert set(corpus["sources"]) == {"gcide", "wordnet"}
    for side in ("ours", "tantivy"):
        ingest = result["ingest"][side]
        assert ingest["docs"] == 3000 and ingest["ingest_counters"]["added"] == 3000
        assert ingest["ingest_counters"]["bad"] == 0
        vis = result["visibility"][side]
        assert vis["samples"] > 0 and vis["write_visible"]["n"] == vis["samples"]
        assert vis["background"]["docs"] > 0 and vis["background"]["errors"] == 0
        assert result["servers"][side]["exit_status"] == 0
        for kind in QUERY_KINDS:
            for order in ("score", "bm25"):
                row = result["queries"][kind][order][side]
                assert row["queries"] > 0 and row["p99_us"] > 0, (kind, order, side, row)
    assert result["tantivy_in_process"]["ingest"]["num_docs"] == 3000
    checks = result["checks"]
    assert checks["counts_compared"] == len(QUERY_KINDS) * 10
    assert checks["count_disagreements"] == []
    assert checks["top10_score_disagreements"] == []
