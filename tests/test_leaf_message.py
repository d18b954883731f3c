"""pinstack.leaf.message: the message format, the schema, and the bridge
to RealtimeSegment (docs/leaf-stream.md is the contract).

    good messages   every field's mapping into an Op
    bad messages    every rule, with its error code and a readable reason
    the contract    whatever parse_message returns, add_batch accepts
                    (hypothesis over random, hostile messages)
    schema          files and dicts, strictly checked
    applying        apply_ops in stream order, parse_records skip / halt

Parsing speed: python -m pytest -m bench -s tests/test_leaf_message.py
"""

from __future__ import annotations

import json
import logging
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pinstack.leaf import RealtimeSegment
from pinstack.leaf.message import (
    ApplyResult,
    MessageError,
    Op,
    Schema,
    SchemaError,
    apply_ops,
    parse_message,
    parse_records,
    segment_docs,
)

SCHEMA = Schema(text=["title", "body"], keywords=["lang", "tag", "board"],
                max_message_bytes=8192, max_terms=8)
PAYLOAD = Schema(text=["title", "body"], keywords=["lang", "tag", "board"], store="payload")


def msg(**kw) -> bytes:
    m = {"op": "index", "key": "pin:1", "version": 1}
    m.update(kw)
    return json.dumps(m).encode()


def parse(raw, schema=SCHEMA) -> Op:
    return parse_message(raw, schema)


# ---- good messages -----------------------------------------------------------------


def test_a_full_index_message():
    raw = json.dumps({
        "op": "index", "key": "pin:1", "version": 7,
        "fields": {"title": "A Cat", "lang": "en", "tag": ["cat", "pet"], "body": "on a mat"},
        "score": 0.5, "payload": {"url": "https://x/é", "n": [1, 2.5, None, True]},
    }).encode()
    op = parse(raw)
    assert op == Op("index", "pin:1", 7, "A Cat\non a mat", ["lang:en", "tag:cat", "tag:pet"],
                    0.5, raw)  # store "source" (the default): the blob is the message
    assert op[1:] == segment_docs([op])[0]
    assert parse(raw, PAYLOAD).blob == '{"url":"https://x/é","n":[1,2.5,null,true]}'.encode()
    assert parse(raw, Schema(["title", "body"], ["lang", "tag"], store="none")).blob == b""


def test_defaults_and_small_messages():
    assert parse(msg()) == Op("index", "pin:1", 1, None, [], 0.0, msg())
    assert parse(msg(fields={}), PAYLOAD) == Op("index", "pin:1", 1, None, [], 0.0, b"")
    op = parse(msg(score=3, version=-5))
    assert op.score == 3.0 and type(op.score) is float and op.version == -5


def test_text_fields_join_with_newlines_in_message_order():
    assert parse(msg(fields={"body": "b", "title": ["t1", "t2"]})).text == "b\nt1\nt2"
    assert parse(msg(fields={"title": []})).text is None


def test_keyword_values_strings_integers_and_lists():
    op = parse(msg(fields={"board": 42, "tag": ["x", 7], "lang": "fr"}))
    assert op.terms == ["board:42", "tag:x", "tag:7", "lang:fr"]
    assert parse(msg(fields={"tag": []})).terms == []
    assert parse(msg(fields={"tag": "ü" * 60})).terms == ["tag:" + "ü" * 60]  # 124 bytes


def test_store_payload_keeps_the_payload_as_compact_json():
    assert parse(msg(), PAYLOAD).blob == b""
    assert parse(msg(payload=None), PAYLOAD).blob == b"null"
    assert parse(msg(payload="abc"), PAYLOAD).blob == b'"abc"'
    assert parse(msg(payload={"a": [1, {"b": "ü"}]}), PAYLOAD).blob == \
        '{"a":[1,{"b":"ü"}]}'.encode()
    assert json.loads(parse(msg(payload={"k": 1.5}), PAYLOAD).blob) == {"k": 1.5}


def test_store_source_keeps_the_message_bytes():
    raw = b'{"op": "index", "key": "k", "version": 1, "payload": {"a": 1}}  '
    assert parse(raw).blob == raw
    assert parse(bytearray(raw)).blob == raw and type(parse(bytearray(raw)).blob) is bytes


def test_a_delete_message():
    raw = b'{"op": "delete", "key": "pin:1", "version": 9}'
    assert parse(raw) == Op("delete", "pin:1", 9, None, [], 0.0, b"")


def test_bytes_like_input_and_escapes():
    raw = msg(key="k\u00e9\U0001F600", fields={"title": "caf\u00e9"})  # \\u escapes, pairs
    assert parse(bytearray(raw)).key == "k\u00e9\U0001F600"
    assert parse(memoryview(raw)).text == "caf\u00e9"


def test_limits_at_their_edges_are_accepted():
    assert parse(msg(key="k" * 1024)).key == "k" * 1024
    assert parse(msg(key="é" * 512)).key == "é" * 512
    assert parse(msg(version=2**63 - 1)).version == 2**63 - 1
    assert parse(msg(version=-(2**63))).version == -(2**63)
    assert len(parse(msg(fields={"tag": "t" * 251})).terms[0]) == 255
    assert len(parse(msg(fields={"tag": [str(i) for i in range(8)]})).terms) == 8
    raw = msg(payload="x" * 100)
    assert parse(raw, Schema(max_message_bytes=len(raw))).blob


# ---- bad messages: every rule ---------------------------------------------------------

BAD = [
    # (raw, code, part of the message)
    (b"x" * 8193, "too_large", "message is 8193 bytes, over the limit of 8192"),
    (b'{"op":"index","key":"\xff","version":1}', "encoding", "message is not UTF-8"),
    (b'{"op": "index", "key": "k"', "json", "not valid JSON: Expecting"),
    (b'{"op":"index","key":"k","version":1} x', "json", "Extra data"),
    (b"\xef\xbb\xbf{}", "json", "not valid JSON: Expecting value: line 1 column 1"),  # a BOM
    (msg().replace(b"1}", b"NaN}"), "json", "NaN is not valid JSON"),
    (msg().replace(b"1}", b"-Infinity}"), "json", "-Infinity is not valid JSON"),
    (b'{"op":"index","key":"k","version":' + b"9" * 5000 + b"}", "json", "not valid JSON"),
    (b'{"op":"index","key":"k","version":1,"payload":' + b"[" * 3000 + b"]" * 3000 + b"}",
     "json", "not valid JSON"),
    (b"[1, 2]", "not_object", "must be a JSON object, not array"),
    (b"null", "not_object", "not null"),
    (b'"pin"', "not_object", "not string"),
    (msg(extra=1, more=2), "unknown_key", "unknown key(s) 'extra', 'more'"),
    (b'{"key":"k","version":1}', "missing", 'missing "op"'),
    (b'{"op":"index","version":1}', "missing", 'missing "key"'),
    (b'{"op":"index","key":"k"}', "missing", 'missing "version"'),
    (msg(op="upsert"), "type", '"op" must be "index" or "delete" (got \'upsert\')'),
    (msg(op=None), "type", '"op" must be "index" or "delete"'),
    (msg(key=12), "type", '"key" must be a string, not number'),
    (msg(key=None), "type", '"key" must be a string, not null'),
    (msg(key=""), "range", '"key" must be 1..1024 bytes'),
    (msg(key="k" * 1025), "range", "(got 1025)"),
    (msg(key="é" * 513), "range", "(got 1026)"),
    (msg(version="1"), "type", '"version" must be an integer, not string'),
    (msg(version=1.5), "type", "not number with a fraction"),
    (msg(version=2.0), "type", "not number with a fraction"),
    (msg(version=True), "type", "not boolean"),
    (msg(version=2**63), "range", "does not fit in a signed 64-bit integer"),
    (msg(version=-(2**63) - 1), "range", "does not fit"),
    (msg(score="1"), "type", '"score" must be a number, not string'),
    (msg(score=False), "type", "not boolean"),
    (msg().replace(b"1}", b'1,"score":1e999}'), "range", '"score" must be finite'),
    (msg(score=10**400), "range", "is too large"),
    (msg(fields=[1]), "type", '"fields" must be an object, not array'),
    (msg(fields=None), "type", '"fields" must be an object, not null'),
    (msg(score=None), "type", '"score" must be a number, not null'),
    (msg(fields={"nope": "x"}), "unknown_field",
     "unknown field 'nope' (the schema names: board, body, lang, tag, title)"),
    (msg(fields={"title": 5}), "type", "text field 'title' must be a string or an array"),
    (msg(fields={"title": ["a", 1]}), "type", "text field 'title'"),
    (msg(fields={"title": None}), "type", "not null"),
    (msg(fields={"tag": 1.5}), "type", "keyword field 'tag' takes strings, integers"),
    (msg(fields={"tag": True}), "type", "not boolean"),
    (msg(fields={"tag": ["a", ["b"]]}), "type", "not array in an array"),
    (msg(fields={"tag": {"a": 1}}), "type", "not object"),
    (msg(fields={"tag": ""}), "empty", "keyword field 'tag' has an empty value"),
    (msg(fields={"tag": ["a", ""]}), "empty", "empty value"),
    (msg(fields={"tag": "t" * 252}), "range", "is 256 bytes; a term is at most 255"),
    (msg(fields={"tag": ["t" * 252]}), "range", "is 256 bytes"),
    (msg(fields={"tag": int("9" * 260)}), "range", "is 264 bytes"),
    (msg(fields={"tag": [int("9" * 260)]}), "range", "is 264 bytes"),
    (msg(fields={"tag": "é" * 126}), "range", "is 256 bytes"),
    (msg(fields={"tag": [str(i) for i in range(9)]}), "limit",
     "9 keyword terms, over the limit of 8"),
    (b'{"op":"delete","key":"k","version":1,"score":1}', "unknown_key",
     "a delete has only op, key and version (got 'score')"),
    (b'{"op":"delete","key":"k","version":1,"fields":{},"payload":1}', "unknown_key",
     "'fields', 'payload'"),
    (b'{"op":"index","key":"a\\ud800","version":1}', "encoding", '"key" is not encodable'),
    (b'{"op":"index","key":"k","version":1,"fields":{"title":"x\\udfff"}}', "encoding",
     "a text field is not encodable"),
    (b'{"op":"index","key":"k","version":1,"fields":{"tag":"\\ud800"}}', "encoding",
     "keyword field 'tag' is not encodable"),
    (b'{"op":"index","key":"k","version":1,"payload":["\\ud800"]}', "encoding",
     '"payload" is not encodable'),
]


@pytest.mark.parametrize("raw, code, text", BAD,
                         ids=[f"{c}-{i}" for i, (_, c, _) in enumerate(BAD)])
def test_every_rule_has_its_error(raw, code, text):
    with pytest.raises(MessageError) as info:
        parse(raw)
    assert info.value.code == code
    assert text in str(info.value)
    assert isinstance(info.value, ValueError)


def test_unknown_fields_are_reported_even_with_no_schema_fields():
    with pytest.raises(MessageError, match=r"the schema names: none\)"):
        parse(msg(fields={"a": "b"}), Schema())


# ---- the contract with the segment ------------------------------------------------------

_SURROGATES = st.sampled_from(["\ud800", "a\udfffb", "\udbff\udc00"])  # lone, lone, a pair
_text = st.one_of(st.text(max_size=40), st.text(max_size=400), _SURROGATES)
_scalar = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                    st.floats(allow_nan=False, allow_infinity=False), _text)
_value = st.one_of(_scalar, st.lists(st.one_of(_text, st.integers(-(2**70), 2**70), _scalar),
                                     max_size=6))
_message = st.fixed_dictionaries(
    {
        "op": st.sampled_from(["index", "index", "index", "delete", "upsert"]),
        "key": st.one_of(st.text(max_size=30), st.text(min_size=250, max_size=1100),
                         st.text(alphabet=st.characters(min_codepoint=0x800), min_size=250,
                                 max_size=400), _SURROGATES, st.integers()),
        "version": st.one_of(st.integers(-(2**64), 2**64), st.floats(allow_nan=False)),
    },
    optional={
        "fields": st.dictionaries(st.sampled_from(["title", "body", "lang", "tag", "other"]),
                                  _value, max_size=5),
        "score": st.one_of(st.floats(allow_nan=False), st.integers(-(2**1100), 2**1100),
                           st.booleans()),
        "payload": st.recursive(_scalar, lambda c: st.one_of(st.lists(c, max_size=3),
                                                             st.dictionaries(st.text(max_size=5), c,
                                                                             max_size=3)),
                                max_leaves=8),
        "junk": _scalar,
    },
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(m=_message, ascii_only=st.booleans())
def test_whatever_parses_is_accepted_by_add_batch(m, ascii_only):
    try:
        raw = json.dumps(m, ensure_ascii=ascii_only).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate can only travel as an escape
        raw = json.dumps(m, ensure_ascii=True).encode()
    schema = Schema(text=["title", "body"], keywords=["lang", "tag"],
                    store=["source", "payload"][len(raw) % 2])
    try:
        op = parse_message(raw, schema)
    except MessageError:
        return
    seg = RealtimeSegment()
    if op.kind == "delete":
        seg.delete(op.key, op.version)
        return
    assert seg.add_batch(segment_docs([op])) == 1
    hit = seg.get(op.key)
    assert hit.version == op.version and hit.blob == op.blob
    for term in op.terms:
        assert seg.count(("term", term)) == 1


# ---- schema -------------------------------------------------------------------------


def test_schema_from_a_file(tmp_path):
    path = tmp_path / "schema.json"
    path.write_text(json.dumps({"text": ["title"], "keywords": ["lang"], "max_terms": 3}))
    s = Schema.load(path)
    assert (s.text, s.keywords, s.max_terms, s.max_message_bytes, s.store) == (
        ("title",), ("lang",), 3, 1 << 20, "source")
    assert Schema.from_dict(s.to_dict()).to_dict() == s.to_dict()
    assert "lang" in repr(s)


@pytest.mark.parametrize("d, text", [
    ({"text": ["a"], "stored": ["b"]}, "unknown key(s) 'stored'"),
    ({"text": "title"}, "text must be a list of field names"),
    ({"keywords": ["a:b"]}, "without ':'"),
    ({"keywords": [""]}, "1..128 characters"),
    ({"keywords": [7]}, "got 7"),
    ({"text": ["a"], "keywords": ["a"]}, "field 'a' is named twice"),
    ({"max_terms": -1}, "max_terms must be an integer 0.."),
    ({"max_terms": True}, "max_terms must be an integer"),
    ({"max_message_bytes": 10}, "max_message_bytes must be an integer 64.."),
    ({"store": "all"}, 'store must be "source", "payload" or "none"'),
    ([], "expected a JSON object"),
])
def test_bad_schemas_are_refused(d, text):
    with pytest.raises(SchemaError, match=None) as info:
        Schema.from_dict(d)
    assert text in str(info.value)


def test_a_schema_file_that_is_not_json(tmp_path):
    path = tmp_path / "s.json"
    path.write_text("{text: 1}")
    with pytest.raises(SchemaError, match=f"schema file {path}: not valid JSON"):
        Schema.load(path)
    path.write_text('{"text": ["a:b"]}')
    with pytest.raises(SchemaError, match=f"schema file {path}: schema: text"):
        Schema.load(path)


# ---- applying -------------------------------------------------------------------------


def test_apply_ops_in_stream_order():
    raws = [
        msg(key="a", version=1, fields={"title": "cat"}),
        msg(key="b", version=1, fields={"title": "cat", "lang": "en"}),
        b'{"op":"delete","key":"a","version":2}',
        msg(key="a", version=1, fields={"title": "cat"}),  # older than the delete: stale
        msg(key="c", version=1, fields={"title": "dog"}),
        b'{"op":"delete","key":"nobody","version":1}',
        msg(key="b", version=3, fields={"title": "bird"}),  # an update
    ]
    seg = RealtimeSegment(writer_threads=2)
    result = apply_ops(seg, [parse(r) for r in raws])
    assert result == ApplyResult(added=4, stale=1, deleted=1)
    assert [h.key for h in seg.search("cat")] == []
    assert [h.key for h in seg.search("bird")] == [b"b"]
    assert seg.get("b").version == 3 and seg.get("a") is None
    assert seg.count('"lang:en"') == 0  # b's new version has no lang


def test_segment_docs_takes_index_ops_only():
    ops = [parse(msg()), parse(b'{"op":"delete","key":"k","version":1}')]
    with pytest.raises(ValueError, match="index ops only"):
        segment_docs(ops)


def test_parse_records_skips_and_logs_with_partition_and_offset(caplog):
    records = [(0, 0, msg(key="a")), (0, 1, b"{oops"), (3, 7, msg(key="b"))]
    with caplog.at_level(logging.WARNING, "pinstack.leaf.message"):
        ops, bad = parse_records(records, SCHEMA)
    assert [op.key for op in ops] == ["a", "b"]
    assert [(b.partition, b.offset, b.error.code) for b in bad] == [(0, 1, "json")]
    assert "skipped a bad message: partition 0 offset 1: message is not valid JSON" in caplog.text


def test_parse_records_halts_on_request():
    with pytest.raises(MessageError, match="^partition 2 offset 5: unknown key") as info:
        parse_records([(2, 4, msg()), (2, 5, msg(x=1))], SCHEMA, halt=True)
    assert (info.value.partition, info.value.offset) == (2, 5)


# ---- speed (python -m pytest -m bench -s tests/test_leaf_message.py) ---------------------


@pytest.mark.bench
def test_bench_parse_rate():
    schema = Schema(text=["title", "description"], keywords=["lang", "board", "tag"])
    raws = [json.dumps({
        "op": "index", "key": f"pin:{i}", "version": i,
        "fields": {"title": f"A red bicycle number {i} by the canal",
                   "description": "Vintage steel frame, new tyres, a basket in front; "
                                  "collected from the workshop on the corner " * 2,
                   "lang": "en", "board": i % 1000, "tag": ["bike", "vintage", "red"]},
        "score": i / 7, "payload": {"url": f"https://example.com/pins/{i}", "w": 640, "h": 480},
    }).encode() for i in range(20000)]
    size = sum(map(len, raws)) / len(raws)
    best = 0.0
    for _ in range(5):
        t0 = time.perf_counter()
        for r in raws:
            parse_message(r, schema)
        best = max(best, len(raws) / (time.perf_counter() - t0))
    seg_docs = segment_docs([parse_message(r, schema) for r in raws])
    t0 = time.perf_counter()
    RealtimeSegment(writer_threads=2).add_batch(seg_docs)
    index_rate = len(raws) / (time.perf_counter() - t0)
    print(f"\nparse_message: {best:,.0f} messages/s ({size:.0f} B each); "
          f"add_batch of the same: {index_rate:,.0f} docs/s")
