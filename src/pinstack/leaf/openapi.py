"""The OpenAPI 3.1 description of pinstack-leaf's HTTP API, served at
/openapi.json. Written by hand next to server.py's ROUTES; a test checks
that every route and method is here and nothing else is. The prose
reference for operators is docs/leaf-server.md."""

from __future__ import annotations

import copy
from typing import Any

from pinstack._version import __version__

__all__ = ["document"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


_BAD = _error("Invalid request: malformed parameter, body or query (the message says which)")
_KEY = {"name": "key", "in": "path", "required": True,
        "description": "The document key, percent-encoded (UTF-8)",
        "schema": {"type": "string", "minLength": 1}}
_FIELDS = {"name": "fields", "in": "query", "required": False,
           "description": "Comma-separated hit fields to return: key, version, score, payload, "
                          "fields, source (payload needs store source or payload; fields and "
                          "source need store source)",
           "schema": {"type": "string"}}
_WAIT = [
    {"name": "wait", "in": "query", "required": False,
     "description": "durable (default): answer once the write is durable. visible: also wait "
                    "(up to timeout_ms) until it is searchable; the answer says whether it is",
     "schema": {"type": "string", "enum": ["durable", "visible"], "default": "durable"}},
    {"name": "timeout_ms", "in": "query", "required": False,
     "description": "How long wait=visible waits (ms)",
     "schema": {"type": "integer", "minimum": 0, "maximum": 60000, "default": 5000}},
]

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {"type": "string", "description": "What is wrong, for a person"},
            "rejected": {"type": "integer", "description": "Invalid messages (writes)"},
            "total": {"type": "integer", "description": "Messages in the batch (writes)"},
            "errors": {
                "type": "array",
                "description": "Each invalid message (the first 100)",
                "items": {
                    "type": "object",
                    "properties": {
                        "index": {"type": "integer", "description": "0-based, in the batch"},
                        "line": {"type": "integer", "description": "1-based (NDJSON bodies)"},
                        "code": {"type": "string", "description": "Rule broken (see "
                                 "docs/leaf-stream.md): too_large, encoding, json, not_object, "
                                 "unknown_key, missing, type, range, unknown_field, empty, "
                                 "limit"},
                        "error": {"type": "string"},
                    },
                },
            },
            "written": {"type": "array", "items": _ref("PartitionWrite"),
                        "description": "Partial write: partitions written"},
            "failed": {"type": "array", "items": {"type": "object"},
                       "description": "Partial write: partitions not written, with why"},
        },
    },
    "Message": {
        "type": "object",
        "description": "A stream message (docs/leaf-stream.md); checked strictly against the "
                       "leaf's schema",
        "required": ["op", "key", "version"],
        "additionalProperties": False,
        "properties": {
            "op": {"type": "string", "enum": ["index", "delete"]},
            "key": {"type": "string", "minLength": 1, "description": "1..1024 bytes of UTF-8"},
            "version": {"type": "integer", "description": "signed 64-bit; newer wins"},
            "fields": {"type": "object", "description": "Values of the schema's text and "
                       "keyword fields (index only)"},
            "score": {"type": "number", "description": "Static score (index only)"},
            "payload": {"description": "Any JSON, returned with hits (index only)"},
        },
    },
    "PartitionWrite": {
        "type": "object",
        "properties": {
            "partition": {"type": "integer"},
            "first_offset": {"type": "integer"},
            "last_offset": {"type": "integer"},
            "records": {"type": "integer"},
        },
    },
    "WriteResult": {
        "type": "object",
        "required": ["written", "partitions", "took_us"],
        "properties": {
            "written": {"type": "integer", "description": "Messages written (all of them)"},
            "index": {"type": "integer"},
            "delete": {"type": "integer"},
            "version": {"type": "integer", "description": "DELETE: the version deleted"},
            "partitions": {"type": "array", "items": _ref("PartitionWrite")},
            "visible": {"type": "boolean", "description": "wait=visible: searchable in time"},
            "took_us": {"type": "integer"},
        },
    },
    "Query": {
        "description": 'Structured query: ["term", t], ["and", q...], ["or", q...], '
                       '["andnot", include, exclude], ["all"]',
        "type": "array",
        "minItems": 1,
    },
    "SearchRequest": {
        "type": "object",
        "additionalProperties": False,
        "description": "Exactly one of q and query",
        "properties": {
            "q": {"type": "string", "description": "Query syntax: cat AND (dog OR bird) -fish, "
                  '"tag:red car", *'},
            "query": _ref("Query"),
            "k": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 10},
            "order": {"type": "string", "enum": ["score", "bm25", "recent"],
                      "default": "score"},
            "count": {"type": "boolean", "default": False,
                      "description": "Also return how many documents match"},
            "fields": {"oneOf": [{"type": "array", "items": {"type": "string"}},
                                 {"type": "string"}]},
        },
    },
    "Hit": {
        "type": "object",
        "properties": {
            "key": {"type": "string"},
            "key_encoding": {"type": "string", "enum": ["hex"],
                             "description": "Present when the key is not UTF-8"},
            "version": {"type": "integer"},
            "score": {"type": "number", "description": "BM25 for order=bm25, else the "
                      "static score"},
            "payload": {"description": "The message's payload (null when none)"},
            "fields": {"type": "object", "description": "The message's fields"},
            "source": {"type": "object", "description": "The whole message"},
        },
    },
    "SearchResult": {
        "type": "object",
        "required": ["hits", "took_us"],
        "properties": {
            "hits": {"type": "array", "items": _ref("Hit")},
            "count": {"type": "integer", "description": "With count=true"},
            "took_us": {"type": "integer", "description": "Time in the index (us)"},
        },
    },
    "Ready": {
        "type": "object",
        "properties": {"ready": {"type": "boolean"}, "reason": {"type": "string"}},
    },
    "AdminResult": {
        "type": "object",
        "properties": {"result": {"type": "object"}, "took_ms": {"type": "number"}},
    },
}

_SEARCH_PARAMS = [
    {"name": "q", "in": "query", "required": True, "schema": {"type": "string"},
     "description": "The query, in query syntax (at most 65536 bytes by default)"},
    {"name": "k", "in": "query", "required": False,
     "schema": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 10}},
    {"name": "order", "in": "query", "required": False,
     "schema": {"type": "string", "enum": ["score", "bm25", "recent"], "default": "score"}},
    {"name": "count", "in": "query", "required": False,
     "schema": {"type": "boolean", "default": False}},
    _FIELDS,
]

_PATHS: dict[str, Any] = {
    "/documents": {
        "post": {
            "summary": "Write messages (embedded source)",
            "description": "A JSON array of messages, or NDJSON (one per line), or one "
                           "object. Every message is checked first: one invalid message "
                           "rejects the batch and nothing is written. Messages go to "
                           "partition crc32(key) mod partitions. Answered once durable.",
            "parameters": _WAIT,
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": {"oneOf": [
                    {"type": "array", "items": _ref("Message")}, _ref("Message")]}},
                "application/x-ndjson": {"schema": {"type": "string"}},
            }},
            "responses": {
                "200": _json(_ref("WriteResult"), "Written and durable"),
                "400": _BAD,
                "409": _error("The leaf reads Kafka: write to the topic"),
                "411": _error("Chunked transfer encoding: send Content-Length"),
                "413": _error("Body over the size limit"),
                "415": _error("Unsupported Content-Type"),
                "500": _error("Write failed (partly: see written/failed)"),
                "503": _error("Shutting down, or the log refuses writes"),
            },
        },
    },
    "/documents/{key}": {
        "get": {
            "summary": "The live document of a key",
            "parameters": [_KEY, _FIELDS],
            "responses": {
                "200": _json(_ref("Hit"), "The document"),
                "400": _BAD,
                "404": _error("No live document with that key"),
            },
        },
        "delete": {
            "summary": "Delete a key (a delete message through the log)",
            "description": "Without version: the live document's version is deleted (404 if "
                           "there is none). With version: a delete of that version is written "
                           "whether or not a document exists (a tombstone: older writes of "
                           "the key are dropped).",
            "parameters": [_KEY, {"name": "version", "in": "query", "required": False,
                                  "schema": {"type": "integer"}}, *_WAIT],
            "responses": {
                "200": _json(_ref("WriteResult"), "The delete is durable"),
                "400": _BAD,
                "404": _error("No live document with that key (no version given)"),
                "409": _error("The leaf reads Kafka: write to the topic"),
            },
        },
    },
    "/search": {
        "get": {
            "summary": "Search with a query string",
            "parameters": _SEARCH_PARAMS,
            "responses": {
                "200": _json(_ref("SearchResult"), "Hits, best first"),
                "400": _BAD,
                "414": _error("Request line too long: use POST /search"),
            },
        },
        "post": {
            "summary": "Search with a JSON body (query syntax or structured)",
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": _ref("SearchRequest")}}},
            "responses": {
                "200": _json(_ref("SearchResult"), "Hits, best first"),
                "400": _BAD,
                "413": _error("Body over the size limit"),
            },
        },
    },
    "/stats": {
        "get": {
            "summary": "Engine, log and ingestion state",
            "responses": {"200": _json({"type": "object"}, "Stats (shape in "
                                       "docs/leaf-server.md)")},
        },
    },
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics",
            "responses": {"200": {"description": "Prometheus text exposition format",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}}},
        },
    },
    "/healthz": {
        "get": {
            "summary": "Liveness: the process answers",
            "responses": {"200": _json({"type": "object"}, '{"status": "ok"}')},
        },
    },
    "/readyz": {
        "get": {
            "summary": "Readiness: caught up with the stream after start",
            "responses": {
                "200": _json(_ref("Ready"), "Ready"),
                "503": _json(_ref("Ready"), "Not ready (catching up, halted, shutting "
                             "down): reason says which"),
            },
        },
    },
    "/admin/flush": {
        "post": {
            "summary": "Flush the active segment to disk now",
            "responses": {"200": _json(_ref("AdminResult"), "What the engine did"),
                          "503": _error("Shutting down")},
        },
    },
    "/admin/compact": {
        "post": {
            "summary": "Compact segments now",
            "responses": {"200": _json(_ref("AdminResult"), "What the engine did"),
                          "503": _error("Shutting down")},
        },
    },
    "/openapi.json": {
        "get": {
            "summary": "This document",
            "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")},
        },
    },
}

_DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "pinstack-leaf",
        "version": __version__,
        "description": "A realtime search leaf: write messages, search them as soon as they "
                       "are durable. Errors are JSON objects with an `error` member. "
                       "Reference: docs/leaf-server.md.",
    },
    "paths": _PATHS,
    "components": {"schemas": _SCHEMAS},
}


def document() -> dict[str, Any]:
    """The OpenAPI document (a fresh copy)."""
    return copy.deepcopy(_DOCUMENT)
