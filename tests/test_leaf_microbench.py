"""Microbenchmarks of pinstack-leaf's realtime segment, and a smoke test of
bench/leaf_compare.py.

The benchmarks (pytest-benchmark) are marked `bench`, which the project's
pytest options deselect; run them with

    python -m pytest -m bench tests/test_leaf_microbench.py

Writes go to fresh segments; queries run on one 100,000-document segment
(bench/leaf_corpus.py, seed 1, writer_threads=2) built once for the module.
Each query benchmark times one fixed query: the first of its kind in
leaf_corpus.make_queries (named in the benchmark's extra_info).

test_leaf_compare_quick is an ordinary test: it runs the comparison script
with --quick and checks its JSON, so that the script cannot rot.
"""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path

import pytest
from helpers import run_quick_bench

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from leaf_corpus import QUERY_KINDS, make_corpus, make_queries  # noqa: E402

from pinstack.leaf import RealtimeSegment  # noqa: E402

SEGMENT_DOCS = 100_000
BATCH = 1000
BATCH_ROUNDS = 40
IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture(scope="module")
def corpus():
    return make_corpus(SEGMENT_DOCS, seed=1)


@pytest.fixture(scope="module")
def segment(corpus):
    seg = RealtimeSegment(writer_threads=2)
    docs = corpus.docs
    for i in range(0, len(docs), BATCH):
        seg.add_batch(docs[i:i + BATCH])
    assert len(seg) == SEGMENT_DOCS
    return seg


@pytest.fixture(scope="module")
def queries(corpus):
    return {kind: qs[0] for kind, qs in make_queries(corpus.vocab, per_kind=1).items()}


@pytest.fixture(scope="module")
def fresh_docs():
    """Documents with keys no other benchmark uses, for the write benchmarks."""
    return make_corpus(BATCH * BATCH_ROUNDS + 1000, seed=2, key_prefix="new:").docs


# --- writes -------------------------------------------------------------------

@pytest.mark.bench
def test_add_one_document(benchmark, fresh_docs):
    seg = RealtimeSegment(writer_threads=1)
    numbers = itertools.count()
    template = fresh_docs[:1000]

    def setup():
        i = next(numbers)
        _, version, text, terms, score, blob = template[i % len(template)]
        return (f"one:{i}", version), {"text": text, "terms": terms, "score": score,
                                       "blob": blob}

    benchmark.pedantic(seg.add, setup=setup, rounds=20_000, warmup_rounds=200)
    assert len(seg) >= 20_000


@pytest.mark.bench
@pytest.mark.parametrize("writer_threads", [1, 2])
def test_add_batch_of_1000(benchmark, fresh_docs, writer_threads):
    seg = RealtimeSegment(writer_threads=writer_threads)
    batches = iter([fresh_docs[i:i + BATCH] for i in range(0, len(fresh_docs), BATCH)])

    def setup():
        return (next(batches),), {}

    benchmark.extra_info["docs_per_round"] = BATCH
    benchmark.pedantic(seg.add_batch, setup=setup, rounds=BATCH_ROUNDS, warmup_rounds=1)
    assert len(seg) >= BATCH


# --- reads --------------------------------------------------------------------

@pytest.mark.bench
@pytest.mark.parametrize("kind", QUERY_KINDS)
def test_count(benchmark, segment, queries, kind):
    q = queries[kind]
    benchmark.extra_info["query"] = repr(q)
    benchmark.extra_info["matches"] = segment.count(q)
    benchmark(segment.count, q)


@pytest.mark.bench
@pytest.mark.parametrize("kind", ["term common", "term rare", "and", "or"])
def test_top10_by_score(benchmark, segment, queries, kind):
    q = queries[kind]
    benchmark.extra_info["query"] = repr(q)
    hits = benchmark(segment.search, q, 10, "score")
    assert len(hits) == min(10, segment.count(q))


@pytest.mark.bench
@pytest.mark.parametrize("kind", ["term common", "term rare", "and", "or"])
def test_top10_by_bm25(benchmark, segment, queries, kind):
    q = queries[kind]
    benchmark.extra_info["query"] = repr(q)
    hits = benchmark(segment.search, q, 10, "bm25")
    assert len(hits) == min(10, segment.count(q))


# --- the comparison script -------------------------------------------------

# Every metric bench/leaf_compare.py must report for both engines.
EXPECTED_METRICS = [
    "ingest 1 thread",
    "ingest 1 thread, tantivy prebuilt",
    "ingest 2 threads vs tantivy 1",
    "ingest 2 threads vs tantivy 2",
    "ingest add() per doc",
    "ingest cpu 1 thread",
    "ingest cpu 2 threads",
    "visibility p50",
    "visibility p99",
    "visibility max",
    "visibility p50, tantivy in RAM",
    "visibility p99, tantivy in RAM",
    "visibility max, tantivy in RAM",
    *(f"qps {kind}, {op}" for kind in QUERY_KINDS
      for op in ("count", "top10 score", "top10 bm25")),
    *(f"qps {kind}, count, ours 1% deleted" for kind in QUERY_KINDS),
    "memory bytes total",
    "memory bytes per doc",
    "memory bytes per posting",
    "memory size / input",
]


def test_leaf_compare_quick(tmp_path):
    try:
        import tantivy  # noqa: F401
    except ImportError:
        if IN_CI:
            pytest.fail("tantivy is not installed (ci/requirements-test.txt lists it)")
        pytest.skip("tantivy is not installed (pip install tantivy)")
    result = run_quick_bench("leaf_compare.py", tmp_path, timeout=300)
    metrics = result["metrics"]
    missing = [name for name in EXPECTED_METRICS if name not in metrics]
    assert not missing, missing
    for name in EXPECTED_METRICS:
        m = metrics[name]
        assert m["ours"] is not None and m["tantivy"] is not None, (name, m)
        if not name.startswith("visibility"):   # ours may be 0 us there
            assert m["ratio"] is not None and m["ratio"] > 0, (name, m)
    for key in ("cpu_model", "cpus", "kernel", "python", "tantivy"):
        assert result["machine"][key], key
    checks = result["checks"]
    assert checks["counts_compared"] > 0
    assert checks["count_disagreements"] == []
    assert checks["top10_score_disagreements"] == []
    assert checks["counts_after_delete_compared"] > 0
    assert checks["count_after_delete_disagreements"] == []
