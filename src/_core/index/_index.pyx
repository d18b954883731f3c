# cython: language_level=3
"""
_index.pyx - the thin Python face of the realtime segment (segment.h,
query.h). The API and its contract are documented in
src/pinstack/_core/_index.pyi; everything that decides anything is in C.

This file only translates:
  * Python documents -> ps_doc_in arrays pointing into the Python objects'
    own buffers (str: its cached UTF-8; bytes: its data), kept alive by
    references held for the duration of the C call;
  * structured queries (nested tuples) -> ps_qnode trees; strings go to
    the C parser;
  * C status codes -> exceptions, in one place (_raise);
  * hits -> Hit named tuples.

The GIL is released around every C call that can take time: indexing,
queries, get(), seal(). A segment's C memory lives as long as the Python
object, and every method holds a reference to it (self) while the C call
runs, so no call can see the segment freed under it.
"""

from collections import namedtuple

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.number cimport PyNumber_Index
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memset


cdef extern from "Python.h":
    const char *PyUnicode_AsUTF8AndSize(object o, Py_ssize_t *size) except NULL


cdef extern from "segment.h" nogil:
    enum:
        PS_OK
        PS_ERR_INVALID
        PS_ERR_FULL
        PS_ERR_SEALED
        PS_ERR_NOMEM
        PS_KEY_MAX

    ctypedef struct ps_segment:
        uint32_t nshards
        uint32_t max_docs

    ctypedef struct ps_doc_in:
        const char *key
        uint32_t key_len
        int64_t version
        const char *text
        size_t text_len
        const char *const *terms
        const uint32_t *term_lens
        uint32_t nterms
        double score
        const char *blob
        size_t blob_len

    ctypedef struct ps_docrec:
        const char *key
        const char *blob
        uint32_t key_len
        uint32_t blob_len
        int64_t version

    ctypedef struct ps_seg_stats:
        uint64_t docs_added, docs_committed, docs_live, docs_deleted, stale_dropped
        uint64_t terms, postings, keys
        uint64_t bytes_postings, bytes_dictionary, bytes_forward, bytes_arena, bytes_total
        uint64_t input_bytes, generation, retired_pending, reclaimed

    ctypedef struct ps_older_hit:
        pass
    ctypedef void (*ps_older_fn)(void *arg, const char *key, uint32_t len, uint64_t hash,
                                 ps_older_hit *out)
    ctypedef struct ps_older:
        ps_older_fn fn
        void *arg

    ps_segment *ps_seg_new(uint32_t nshards, uint32_t max_docs, double k1, double b,
                           uint64_t base, char *err, size_t errlen)
    void ps_seg_free(ps_segment *s)
    int ps_seg_add_batch(ps_segment *s, const ps_doc_in *docs, uint32_t n, bint threaded,
                         const ps_older *older, int64_t *ids, uint32_t *added, char *err,
                         size_t errlen)
    int ps_seg_delete(ps_segment *s, const char *key, uint32_t key_len, bint has_version,
                      int64_t version, const ps_older *older, int *deleted, char *err,
                      size_t errlen)
    int64_t ps_seg_get(ps_segment *s, const char *key, uint32_t key_len)
    void ps_seg_seal(ps_segment *s)
    uint32_t ps_seg_committed(ps_segment *s)
    const ps_docrec *ps_seg_doc(const ps_segment *s, uint32_t doc)
    double ps_seg_score(const ps_segment *s, uint32_t doc)
    void ps_seg_stats_get(ps_segment *s, ps_seg_stats *out)
    uint32_t ps_seg_live(ps_segment *s)
    uint64_t ps_seg_snap(const ps_segment *s, uint32_t w)


cdef extern from "segfile.h" nogil:
    ctypedef struct ps_fseg:
        uint32_t ndocs, ntombs
        uint64_t nterms, postings, total_dl
        size_t size
        const double *score
        const int64_t *version
        uint32_t max_store_raw
        uint32_t deleted_count

    ctypedef struct ps_src:
        ps_segment *rt
        ps_fseg *f

    ctypedef struct ps_src_list:
        const ps_src *src
        uint32_t n

    ctypedef struct ps_sf_write_stats:
        uint64_t docs, dropped, tombs, terms, postings, bytes

    void ps_src_older_lookup(void *arg, const char *key, uint32_t len, uint64_t hash,
                             ps_older_hit *out)
    int ps_src_get(const ps_src *src, uint32_t n, const char *key, uint32_t len, uint64_t snap,
                   uint32_t *which, uint32_t *doc)
    int ps_sf_write(const char *path, const ps_src *inp, uint32_t n, uint64_t snap,
                    uint64_t max_bytes_per_sec, uint32_t **remap, ps_sf_write_stats *st,
                    char *err, size_t errlen)
    ps_fseg *ps_fseg_open(const char *path, char *err, size_t errlen)
    void ps_fseg_close(ps_fseg *f)
    uint32_t ps_sf_input_docs(const ps_src *inp)
    const char *ps_fseg_key(const ps_fseg *f, uint32_t ref, uint32_t *len)
    int64_t ps_fseg_blob(const ps_fseg *f, uint32_t doc, char *buf, const char **blob)
    uint64_t ps_sf_shadow(ps_fseg *const *segs, uint32_t n)
    uint64_t ps_sf_carry_deletes(const ps_src *inp, uint32_t n, uint32_t *const *remap,
                                 ps_fseg *out)


cdef extern from "msgbatch.h" nogil:
    ctypedef struct mb_counts:
        uint64_t added, stale, deleted, deletes

    int mb_apply_docs(ps_segment *s, const ps_doc_in *docs, const uint8_t *is_delete, uint32_t n,
                      const ps_older *older, mb_counts *counts, char *err, size_t errlen)


cdef extern from *:
    """
    static inline int ps_seg_sealed_flag(ps_segment *s) { return atomic_load(&s->sealed); }
    """
    int _sealed "ps_seg_sealed_flag" (ps_segment *s) nogil


cdef extern from "query.h" nogil:
    enum:
        PS_Q_TERM
        PS_Q_AND
        PS_Q_OR
        PS_Q_ANDNOT
        PS_Q_ALL
        PS_ORDER_SCORE
        PS_ORDER_BM25
        PS_ORDER_RECENT
        PS_Q_MAX_DEPTH
        PS_K_MAX

    ctypedef struct ps_qnode:
        int kind
        uint32_t nchild
        ps_qnode **child
        char *term
        uint32_t len

    ctypedef struct ps_hit:
        uint32_t src
        uint32_t doc
        double score

    ps_qnode *ps_q_term(const char *term, uint32_t len)
    ps_qnode *ps_q_op(int kind, uint32_t nchild)
    void ps_q_free(ps_qnode *q)
    int ps_q_check(const ps_qnode *q, char *err, size_t errlen)
    int ps_q_parse(const char *text, size_t len, ps_qnode **out, char *err, size_t errlen)
    int ps_q_count_view(const ps_src *src, uint32_t n, const ps_qnode *q, uint64_t *count)
    int ps_q_search_view(const ps_src *src, uint32_t n, const ps_qnode *q, uint32_t k,
                         int order, ps_hit *out, uint32_t *nout)


Hit = namedtuple("Hit", ["key", "version", "score", "blob", "doc_id"])
Hit.__doc__ = "One search result: key, version, score, blob, doc_id."


class SegmentFull(RuntimeError):
    """The segment holds max_docs documents: seal it and start another."""


class SegmentSealed(RuntimeError):
    """A write to a sealed segment."""


class SegmentFileError(Exception):
    """A segment file that cannot be used (missing, truncated, damaged, or
    written by a newer format), or one that could not be written."""


DEF ERRLEN = 256

cdef class _Sources  # below: segments as a C array

cdef dict _ORDERS = {"score": PS_ORDER_SCORE, "bm25": PS_ORDER_BM25, "recent": PS_ORDER_RECENT}
cdef dict _KINDS = {"term": PS_Q_TERM, "and": PS_Q_AND, "or": PS_Q_OR,
                    "andnot": PS_Q_ANDNOT, "all": PS_Q_ALL}


cdef int _raise(int rc, const char *err) except -1:
    """The one translator from C status codes to exceptions."""
    msg = err.decode("utf-8", "replace")
    if rc == PS_ERR_INVALID:
        raise ValueError(msg)
    if rc == PS_ERR_FULL:
        raise SegmentFull(msg)
    if rc == PS_ERR_SEALED:
        raise SegmentSealed(msg)
    if rc == PS_ERR_NOMEM:
        raise MemoryError(msg)
    raise RuntimeError(msg)


cdef inline const char *_buf(object o, Py_ssize_t *n, str what) except NULL:
    """Pointer to the bytes of a str (UTF-8) or bytes object; o must stay
    referenced while the pointer is used."""
    if type(o) is str:
        return PyUnicode_AsUTF8AndSize(o, n)
    if type(o) is bytes:
        n[0] = PyBytes_GET_SIZE(o)
        return PyBytes_AS_STRING(o)
    if isinstance(o, str):
        return PyUnicode_AsUTF8AndSize(o, n)
    if isinstance(o, bytes):
        n[0] = PyBytes_GET_SIZE(o)
        return PyBytes_AS_STRING(o)
    raise TypeError(f"{what} must be str or bytes, not {type(o).__name__}")


cdef ps_qnode *_build_query(object q, int depth) except NULL:
    """Structured query (nested tuples) -> C tree. Raises ValueError."""
    cdef ps_qnode *node = NULL
    cdef Py_ssize_t n
    cdef const char *p
    if depth > PS_Q_MAX_DEPTH:
        raise ValueError(f"query: nested deeper than {PS_Q_MAX_DEPTH}")
    if not isinstance(q, (tuple, list)) or len(q) == 0:
        raise ValueError(f"query: expected a tuple like ('term', 'cat'), got {q!r}")
    op = q[0]
    kind = _KINDS.get(op) if isinstance(op, str) else None
    if kind is None:
        raise ValueError(f"query: unknown operator {op!r} (term, and, or, andnot, all)")
    if kind == PS_Q_TERM:
        if len(q) != 2:
            raise ValueError("query: ('term', t) takes exactly one term")
        p = _buf(q[1], &n, "a query term")
        if n < 1 or n > 255:
            raise ValueError(f"query: a term must be 1..255 bytes (got {n})")
        node = ps_q_term(p, <uint32_t>n)
        if node == NULL:
            raise MemoryError()
        return node
    if kind == PS_Q_ALL:
        if len(q) != 1:
            raise ValueError("query: ('all',) takes no operands")
        node = ps_q_op(PS_Q_ALL, 0)
        if node == NULL:
            raise MemoryError()
        return node
    nchild = len(q) - 1
    if kind == PS_Q_ANDNOT and nchild != 2:
        raise ValueError("query: ('andnot', include, exclude) takes exactly two operands")
    if nchild < 1:
        raise ValueError(f"query: ({op!r}, ...) needs at least one operand")
    node = ps_q_op(kind, <uint32_t>nchild)
    if node == NULL:
        raise MemoryError()
    try:
        for i in range(nchild):
            node.child[i] = _build_query(q[i + 1], depth + 1)
    except BaseException:
        ps_q_free(node)
        raise
    return node


cdef ps_qnode *_compile(object query) except NULL:
    cdef ps_qnode *node = NULL
    cdef char err[ERRLEN]
    cdef Py_ssize_t n
    cdef const char *p
    err[0] = 0
    if isinstance(query, str):
        p = PyUnicode_AsUTF8AndSize(query, &n)
        if ps_q_parse(p, <size_t>n, &node, err, ERRLEN) != 0:
            raise ValueError(err.decode("utf-8", "replace"))
        return node
    node = _build_query(query, 1)
    if ps_q_check(node, err, ERRLEN) != 0:
        ps_q_free(node)
        raise ValueError(err.decode("utf-8", "replace"))
    return node


cdef object _to_tuple(const ps_qnode *q):
    if q.kind == PS_Q_TERM:
        return ("term", PyBytes_FromStringAndSize(q.term, q.len).decode("utf-8", "surrogateescape"))
    if q.kind == PS_Q_ALL:
        return ("all",)
    name = {PS_Q_AND: "and", PS_Q_OR: "or", PS_Q_ANDNOT: "andnot"}[q.kind]
    return (name,) + tuple(_to_tuple(q.child[i]) for i in range(q.nchild))


def parse_query(str query):
    """The structured form of a human-syntax query (raises ValueError)."""
    cdef ps_qnode *node = _compile(query)
    try:
        return _to_tuple(node)
    finally:
        ps_q_free(node)


cdef class RealtimeSegment:
    """An in-memory realtime segment; see pinstack/_core/_index.pyi."""

    cdef ps_segment *seg
    cdef readonly uint32_t writer_threads
    cdef readonly uint32_t max_docs
    cdef readonly uint64_t base

    def __cinit__(self, int writer_threads=1, long long max_docs=1 << 24,
                  double k1=1.2, double b=0.75, unsigned long long base=0):
        cdef char err[ERRLEN]
        err[0] = 0
        if writer_threads < 1 or writer_threads > 64:
            raise ValueError(f"writer_threads must be 1..64 (got {writer_threads})")
        if max_docs < 1 or max_docs > (1 << 31):
            raise ValueError(f"max_docs must be 1..{1 << 31} (got {max_docs})")
        if base > (1 << 62):
            raise ValueError(f"base must be 0..{1 << 62} (got {base})")
        self.seg = ps_seg_new(<uint32_t>writer_threads, <uint32_t>max_docs, k1, b, base,
                              err, ERRLEN)
        self.base = base
        if self.seg == NULL:
            raise ValueError(err.decode("utf-8", "replace"))
        self.writer_threads = writer_threads
        self.max_docs = <uint32_t>max_docs

    def __dealloc__(self):
        if self.seg != NULL:
            with nogil:
                ps_seg_free(self.seg)
            self.seg = NULL

    cdef int _index(self, list docs, bint threaded, int64_t *ids, uint32_t *added,
                    object older=None, const uint8_t *is_delete=NULL,
                    mb_counts *counts=NULL) except -1:
        """docs: list of 6-tuples, already type-checked by the callers'
        unpacking below. Builds ps_doc_in[] and runs the C writer; with
        is_delete, a run of mixed ops (msgbatch.c's mb_apply_docs) whose
        counts go to *counts."""
        cdef Py_ssize_t n = len(docs), total_terms = 0, i, j, ln
        cdef ps_doc_in *ins = NULL
        cdef const char **tp = NULL
        cdef uint32_t *tl = NULL
        cdef char err[ERRLEN]
        cdef int rc
        cdef Py_ssize_t at = 0
        cdef _Sources olds = None
        cdef const ps_older *olp = NULL
        err[0] = 0
        if n == 0:
            added[0] = 0
            return 0
        if older:
            olds = _Sources(older)
            olp = olds.as_older()
        if n > 0xFFFFFFFF:
            raise ValueError("batch too large")
        keep = []  # terms tuples, so their items outlive the C call
        for i in range(n):
            terms = docs[i][3]
            terms = () if terms is None else tuple(terms)
            keep.append(terms)
            total_terms += len(terms)
        ins = <ps_doc_in *>PyMem_Malloc(n * sizeof(ps_doc_in))
        tp = <const char **>PyMem_Malloc((total_terms + 1) * sizeof(char *))
        tl = <uint32_t *>PyMem_Malloc((total_terms + 1) * sizeof(uint32_t))
        try:
            if ins == NULL or tp == NULL or tl == NULL:
                raise MemoryError()
            memset(ins, 0, n * sizeof(ps_doc_in))
            for i in range(n):
                key, version, text, _, score, blob = docs[i]
                ins[i].key = _buf(key, &ln, "key")
                if ln > PS_KEY_MAX or ln < 1:
                    raise ValueError(f"document {i}: key must be 1..{PS_KEY_MAX} bytes (got {ln})")
                ins[i].key_len = <uint32_t>ln
                ins[i].version = PyNumber_Index(version)  # ints only: 2.7 is a bug
                if text is not None:
                    if not isinstance(text, str):
                        raise TypeError(f"document {i}: text must be str or None, "
                                        f"not {type(text).__name__}")
                    ins[i].text = PyUnicode_AsUTF8AndSize(text, &ln)
                    ins[i].text_len = <size_t>ln
                ins[i].score = score
                if blob is None:
                    blob = b""
                if not isinstance(blob, bytes):
                    raise TypeError(f"document {i}: blob must be bytes, not {type(blob).__name__}")
                ins[i].blob = PyBytes_AS_STRING(blob)
                ins[i].blob_len = <size_t>PyBytes_GET_SIZE(blob)
                terms = keep[i]
                ins[i].terms = &tp[at]
                ins[i].term_lens = &tl[at]
                ins[i].nterms = <uint32_t>len(terms)
                for j in range(len(terms)):
                    tp[at] = _buf(terms[j], &ln, "a term")
                    if ln > 0xFFFF:
                        ln = 0xFFFF  # the C check reports it as too long
                    tl[at] = <uint32_t>ln
                    at += 1
            with nogil:
                if is_delete != NULL:
                    rc = mb_apply_docs(self.seg, ins, is_delete, <uint32_t>n, olp, counts,
                                       err, ERRLEN)
                else:
                    rc = ps_seg_add_batch(self.seg, ins, <uint32_t>n, threaded, olp, ids,
                                          added, err, ERRLEN)
            if rc != PS_OK:
                _raise(rc, err)
        finally:
            PyMem_Free(ins)
            PyMem_Free(<void *>tp)
            PyMem_Free(tl)
        return 0

    def add(self, key, version, *, text=None, terms=(), score=0.0, blob=b""):
        """Index one document; searchable when this returns. Doc id or -1 (stale)."""
        cdef int64_t doc_id = -1
        cdef uint32_t added = 0
        self._index([(key, version, text, terms, score, blob)], False, &doc_id, &added)
        return doc_id

    def add_batch(self, docs, older=None):
        """Index many documents with every writer thread; returns how many were added.

        older: the leaf's older segments (RealtimeSegment or SegmentFile),
        newest first: their versions count in the stale checks and their
        documents are deleted by updates."""
        cdef uint32_t added = 0
        batch = []
        for i, d in enumerate(docs):
            if not isinstance(d, tuple) or len(d) != 6:
                raise ValueError(f"document {i}: expected a tuple "
                                 f"(key, version, text, terms, score, blob)")
            batch.append(d)
        self._index(batch, True, NULL, &added, older)
        return added

    def apply(self, ops, older=None):
        """Apply ops (kind, key, version, text, terms, score, blob), kind
        "index" or "delete", in order: each run of index ops is one
        add_batch, each delete a versioned delete. Returns (added, stale,
        deleted). older: as for add_batch."""
        cdef mb_counts counts
        cdef uint32_t added = 0
        cdef Py_ssize_t i, n = len(ops)
        cdef uint8_t *dels = <uint8_t *>PyMem_Malloc(n + 1)
        memset(&counts, 0, sizeof(counts))
        if dels == NULL:
            raise MemoryError()
        try:
            batch = []
            for i in range(n):
                op = ops[i]
                if not isinstance(op, tuple) or len(op) != 7:
                    raise ValueError(f"op {i}: expected a tuple "
                                     f"(kind, key, version, text, terms, score, blob)")
                kind = op[0]
                if kind != "index" and kind != "delete":
                    raise ValueError(f"op {i}: kind must be 'index' or 'delete' (got {kind!r})")
                dels[i] = kind == "delete"
                batch.append(op[1:])
            self._index(batch, True, NULL, &added, older, dels, &counts)
        finally:
            PyMem_Free(dels)
        return counts.added, counts.stale, counts.deleted

    def delete(self, key, version=None, older=None):
        """Delete the key's live document (versioned: only if not newer). True if deleted.
        older: as for add_batch."""
        cdef _Sources olds = None
        cdef const ps_older *olp = NULL
        cdef Py_ssize_t n
        cdef const char *p = _buf(key, &n, "key")
        cdef int deleted = 0, rc
        cdef int64_t v = 0 if version is None else PyNumber_Index(version)
        cdef bint has_version = version is not None
        cdef char err[ERRLEN]
        err[0] = 0
        if n < 1 or n > PS_KEY_MAX:
            raise ValueError(f"key must be 1..{PS_KEY_MAX} bytes (got {n})")
        if older:
            olds = _Sources(older)
            olp = olds.as_older()
        with nogil:
            rc = ps_seg_delete(self.seg, p, <uint32_t>n, has_version, v, olp, &deleted, err,
                               ERRLEN)
        if rc != PS_OK:
            _raise(rc, err)
        return bool(deleted)

    cdef object _hit(self, uint32_t doc, double score):
        cdef const ps_docrec *r = ps_seg_doc(self.seg, doc)
        return Hit(PyBytes_FromStringAndSize(r.key, r.key_len), r.version, score,
                   PyBytes_FromStringAndSize(r.blob, r.blob_len), doc)

    def search(self, query, k=10, str order="score"):
        """Best k live matches, best first, one per key."""
        return search_view((self,), query, k, order)

    def count(self, query):
        """Number of live documents matching."""
        return count_view((self,), query)

    def get(self, key):
        """The key's live document as a Hit (score = static score), or None."""
        cdef Py_ssize_t n
        cdef const char *p = _buf(key, &n, "key")
        cdef int64_t doc
        if n < 1 or n > PS_KEY_MAX:
            raise ValueError(f"key must be 1..{PS_KEY_MAX} bytes (got {n})")
        with nogil:
            doc = ps_seg_get(self.seg, p, <uint32_t>n)
        if doc < 0:
            return None
        return self._hit(<uint32_t>doc, ps_seg_score(self.seg, <uint32_t>doc))

    def seal(self):
        """Freeze the segment: later writes raise SegmentSealed; reads go on."""
        with nogil:
            ps_seg_seal(self.seg)

    @property
    def sealed(self):
        return bool(_sealed(self.seg))

    def __len__(self):
        return ps_seg_live(self.seg)

    @property
    def seq_end(self):
        """base + committed documents: the base of the segment that follows."""
        return ps_seg_snap(self.seg, ps_seg_committed(self.seg))

    def stats(self):
        """Counters and memory; see the .pyi for every key."""
        cdef ps_seg_stats st
        with nogil:
            ps_seg_stats_get(self.seg, &st)
        d = {
            "docs_added": st.docs_added,
            "docs_committed": st.docs_committed,
            "docs_live": st.docs_live,
            "docs_deleted": st.docs_deleted,
            "stale_dropped": st.stale_dropped,
            "terms": st.terms,
            "postings": st.postings,
            "keys": st.keys,
            "writer_threads": self.writer_threads,
            "max_docs": self.max_docs,
            "sealed": int(_sealed(self.seg)),
            "bytes_postings": st.bytes_postings,
            "bytes_dictionary": st.bytes_dictionary,
            "bytes_forward": st.bytes_forward,
            "bytes_arena": st.bytes_arena,
            "bytes_total": st.bytes_total,
            "input_bytes": st.input_bytes,
            "generation": st.generation,
            "retired_pending": st.retired_pending,
            "reclaimed": st.reclaimed,
        }
        d["bytes_per_posting"] = (st.bytes_postings / st.postings) if st.postings else 0.0
        d["bytes_per_doc"] = (st.bytes_total / st.docs_committed) if st.docs_committed else 0.0
        return d



cdef class SegmentFile:
    """An immutable segment file, mapped; see pinstack/_core/_index.pyi."""

    cdef ps_fseg *f
    cdef readonly str path

    def __cinit__(self, path):
        cdef char err[ERRLEN]
        err[0] = 0
        self.path = str(path)
        bpath = self.path.encode()
        cdef const char *p = bpath
        with nogil:
            self.f = ps_fseg_open(p, err, ERRLEN)
        if self.f == NULL:
            raise SegmentFileError(err.decode("utf-8", "replace"))

    def __dealloc__(self):
        if self.f != NULL:
            ps_fseg_close(self.f)
            self.f = NULL

    cdef object _hit(self, uint32_t doc, double score):
        cdef uint32_t kl
        cdef const char *k = ps_fseg_key(self.f, doc, &kl)
        cdef const char *blob = NULL
        cdef int64_t bl
        buf = PyBytes_FromStringAndSize(NULL, self.f.max_store_raw + 1)
        bl = ps_fseg_blob(self.f, doc, PyBytes_AS_STRING(buf), &blob)
        if bl < 0:
            raise SegmentFileError(f"segment file {self.path}: the stored fields of document "
                                   f"{doc} do not decompress")
        return Hit(PyBytes_FromStringAndSize(k, kl), self.f.version[doc], score,
                   PyBytes_FromStringAndSize(blob, bl), doc)

    def __len__(self):
        """Live documents."""
        return self.f.ndocs - self.f.deleted_count

    @property
    def docs(self):
        return self.f.ndocs

    def stats(self):
        return {
            "path": self.path,
            "docs": self.f.ndocs,
            "docs_deleted": self.f.deleted_count,
            "docs_live": self.f.ndocs - self.f.deleted_count,
            "tombstones": self.f.ntombs,
            "terms": self.f.nterms,
            "postings": self.f.postings,
            "bytes": self.f.size,
        }

    def search(self, query, k=10, str order="score"):
        return search_view((self,), query, k, order)

    def count(self, query):
        return count_view((self,), query)

    def get(self, key):
        return get_view((self,), key)


cdef class _Sources:
    """A tuple of RealtimeSegment/SegmentFile as a C ps_src array; holds
    references to them for as long as it lives."""

    cdef ps_src *src
    cdef uint32_t n
    cdef tuple objs
    cdef ps_src_list lst
    cdef ps_older ol

    def __cinit__(self, sources):
        self.objs = tuple(sources)
        if len(self.objs) > 100000:
            raise ValueError("too many segments")
        self.n = <uint32_t>len(self.objs)
        self.src = <ps_src *>PyMem_Malloc((self.n + 1) * sizeof(ps_src))
        if self.src == NULL:
            raise MemoryError()
        memset(self.src, 0, (self.n + 1) * sizeof(ps_src))
        for i, o in enumerate(self.objs):
            if isinstance(o, RealtimeSegment):
                self.src[i].rt = (<RealtimeSegment>o).seg
            elif isinstance(o, SegmentFile):
                self.src[i].f = (<SegmentFile>o).f
            else:
                raise TypeError(f"segment {i}: expected RealtimeSegment or SegmentFile, "
                                f"not {type(o).__name__}")

    def __dealloc__(self):
        PyMem_Free(self.src)

    cdef const ps_older *as_older(self):
        """These sources, NEWEST first, as the segment's lookup into older
        segments (valid while this object lives)."""
        self.lst.src = self.src
        self.lst.n = self.n
        self.ol.fn = ps_src_older_lookup
        self.ol.arg = &self.lst
        return &self.ol

    cdef object hit(self, uint32_t i, uint32_t doc, double score):
        o = self.objs[i]
        if isinstance(o, RealtimeSegment):
            return (<RealtimeSegment>o)._hit(doc, score)
        return (<SegmentFile>o)._hit(doc, score)

    cdef double static_score(self, uint32_t i, uint32_t doc):
        o = self.objs[i]
        if isinstance(o, RealtimeSegment):
            return ps_seg_score((<RealtimeSegment>o).seg, doc)
        return (<SegmentFile>o).f.score[doc]

    cdef uint64_t snapshot(self):
        cdef uint32_t i = self.n
        while i > 0:
            i -= 1
            if self.src[i].rt != NULL:
                return ps_seg_snap(self.src[i].rt, ps_seg_committed(self.src[i].rt))
        return 0xFFFFFFFFFFFFFFFF


def search_view(sources, query, k=10, str order="score"):
    """Best k live matches over sources (oldest first), best first."""
    cdef _Sources v = _Sources(sources)
    cdef int ord_
    cdef ps_hit *hits
    cdef uint32_t nout = 0, i, kk
    cdef int rc
    k = PyNumber_Index(k)
    if order not in _ORDERS:
        raise ValueError(f"order must be 'score', 'bm25' or 'recent' (got {order!r})")
    if k < 1 or k > PS_K_MAX:
        raise ValueError(f"k must be 1..{PS_K_MAX} (got {k})")
    ord_ = _ORDERS[order]
    kk = k
    cdef ps_qnode *node = _compile(query)
    hits = <ps_hit *>PyMem_Malloc(k * sizeof(ps_hit))
    if hits == NULL:
        ps_q_free(node)
        raise MemoryError()
    try:
        with nogil:
            rc = ps_q_search_view(v.src, v.n, node, kk, ord_, hits, &nout)
        if rc != 0:
            raise MemoryError()
        if ord_ == PS_ORDER_RECENT:
            return [v.hit(hits[i].src, hits[i].doc, v.static_score(hits[i].src, hits[i].doc))
                    for i in range(nout)]
        return [v.hit(hits[i].src, hits[i].doc, hits[i].score) for i in range(nout)]
    finally:
        ps_q_free(node)
        PyMem_Free(hits)


def count_view(sources, query):
    """Live documents matching over sources (oldest first)."""
    cdef _Sources v = _Sources(sources)
    cdef uint64_t n = 0
    cdef int rc
    cdef ps_qnode *node = _compile(query)
    with nogil:
        rc = ps_q_count_view(v.src, v.n, node, &n)
        ps_q_free(node)
    if rc != 0:
        raise MemoryError()
    return n


def get_view(sources, key):
    """The key's live document over sources (oldest first), or None."""
    cdef _Sources v = _Sources(sources)
    cdef Py_ssize_t n
    cdef const char *p = _buf(key, &n, "key")
    cdef uint32_t which = 0, doc = 0
    cdef int rc
    cdef uint64_t snap
    if n < 1 or n > PS_KEY_MAX:
        raise ValueError(f"key must be 1..{PS_KEY_MAX} bytes (got {n})")
    snap = v.snapshot()
    with nogil:
        rc = ps_src_get(v.src, v.n, p, <uint32_t>n, snap, &which, &doc)
    if rc != 0:
        return None
    return v.hit(which, doc, v.static_score(which, doc))


def view_snapshot(sources):
    """The snapshot a query over sources (oldest first) would take now."""
    return _Sources(sources).snapshot()


cdef class Remap:
    """Where each input document of a write_segment went; carries deletes
    that landed on the inputs after the write onto the new file."""

    cdef uint32_t **maps
    cdef _Sources inputs

    def __dealloc__(self):
        if self.maps != NULL and self.inputs is not None:
            for i in range(self.inputs.n):
                free(self.maps[i])
        free(self.maps)

    def carry(self, SegmentFile out):
        """Copy the inputs' deletion stamps to `out` (the file written from
        them). Call from the leaf's writing thread. Returns how many."""
        cdef uint64_t n
        with nogil:
            n = ps_sf_carry_deletes(self.inputs.src, self.inputs.n, self.maps, out.f)
        return n


def write_segment(path, inputs, unsigned long long snapshot, *,
                  unsigned long long max_bytes_per_sec=0):
    """Write inputs (sealed RealtimeSegments and SegmentFiles, oldest first)
    as one segment file at path: the documents live at `snapshot`, terms
    merged, tombstones kept; no faster than max_bytes_per_sec (0: no
    limit). Returns (stats, Remap). GIL released."""
    cdef _Sources v = _Sources(inputs)
    cdef Remap r = Remap()
    cdef ps_sf_write_stats st
    cdef char err[ERRLEN]
    cdef int rc
    cdef uint64_t snap = snapshot
    err[0] = 0
    for i, o in enumerate(v.objs):
        if isinstance(o, RealtimeSegment) and not o.sealed:
            raise ValueError(f"input {i}: a realtime segment must be sealed before it is written")
    bpath = str(path).encode()
    cdef const char *p = bpath
    r.inputs = v
    r.maps = <uint32_t **>calloc(v.n + 1, sizeof(uint32_t *))
    if r.maps == NULL:
        raise MemoryError()
    with nogil:
        rc = ps_sf_write(p, v.src, v.n, snap, max_bytes_per_sec, r.maps, &st, err, ERRLEN)
    if rc != 0:
        raise SegmentFileError(err.decode("utf-8", "replace"))
    return ({"docs": st.docs, "dropped": st.dropped, "tombstones": st.tombs,
             "terms": st.terms, "postings": st.postings, "bytes": st.bytes}, r)


def shadow(files):
    """After a restart: newer files' keys delete older files' documents of
    the same keys. files: SegmentFiles, oldest first. Returns how many."""
    cdef _Sources v = _Sources(files)
    cdef ps_fseg **fs = <ps_fseg **>PyMem_Malloc((v.n + 1) * sizeof(ps_fseg *))
    cdef uint64_t n
    if fs == NULL:
        raise MemoryError()
    try:
        for i in range(v.n):
            if v.src[i].f == NULL:
                raise TypeError("shadow takes SegmentFiles only")
            fs[i] = v.src[i].f
        with nogil:
            n = ps_sf_shadow(fs, v.n)
        return n
    finally:
        PyMem_Free(fs)


# ---- messages: pinstack.leaf.message's parser (msgparse.h) -------------------
#
# The rules live in msgparse.c; this only moves bytes in and Python objects
# out. A MessageParser holds the C form of one Schema (immutable, shared by
# threads) and one spare work area: a call takes it (or makes another, when
# another thread or a re-entrant call holds it) and gives it back, and the
# GIL makes taking and giving atomic. parse() keeps the GIL for small
# records (releasing and taking it back costs more than parsing them, and
# can wait a whole switch interval behind another thread); a MessageBatch
# (below) parses many with the GIL released once, in a work area of its own.

cdef extern from "msgparse.h" nogil:
    enum:
        MP_OK
        MP_NOMEM
        MP_STORE_SOURCE
        MP_STORE_PAYLOAD
        MP_STORE_NONE
        MP_OP_INDEX
        MP_OP_DELETE
        MP_BLOB_EMPTY
        MP_BLOB_SOURCE
        MP_BLOB_OUT
        MP_PART_TEXT
        MP_PART_REPR

    ctypedef struct mp_field_def:
        const char *name
        size_t len
        int text

    ctypedef struct mp_schema_def:
        const mp_field_def *fields
        uint32_t nfields
        int store
        uint32_t max_message_bytes
        uint32_t max_terms
        uint32_t int_max_digits

    ctypedef struct mp_parser:
        pass

    ctypedef struct mp_work:
        pass

    ctypedef struct mp_span:
        size_t off
        size_t len

    ctypedef struct mp_part:
        int kind
        size_t off
        size_t len

    ctypedef struct mp_result:
        int status
        int kind
        int64_t version
        double score
        mp_span key
        int has_text
        mp_span text
        size_t term0
        uint32_t nterms
        int blob
        mp_span blob_span
        size_t part0
        uint32_t nparts

    mp_parser *mp_parser_new(const mp_schema_def *d, char *err, size_t errlen)
    void mp_parser_free(mp_parser *p)
    mp_work *mp_work_new()
    void mp_work_free(mp_work *w)
    void mp_work_clear(mp_work *w)
    void mp_work_trim(mp_work *w, size_t keep)
    int mp_parse(const mp_parser *p, mp_work *w, const char *raw, size_t len, mp_result *res)
    const char *mp_work_out(const mp_work *w)
    const mp_span *mp_work_terms(const mp_work *w)
    const mp_part *mp_work_parts(const mp_work *w)
    const char *mp_code(int status)


cdef extern from *:
    """
    /* An instance of a tuple subclass (a NamedTuple) without its Python-level
     * __new__: what tuple.__new__(cls, items) does, minus the argument tuple. */
    static PyObject *mp_new_op(PyObject *cls, PyObject *kind, PyObject *key, PyObject *version,
                               PyObject *text, PyObject *terms, PyObject *score, PyObject *blob)
    {
        PyTypeObject *t = (PyTypeObject *)cls;
        PyObject *items[7];
        PyObject *o = t->tp_alloc(t, 7);
        Py_ssize_t i;
        if (o == NULL)
            return NULL;
        items[0] = kind; items[1] = key; items[2] = version; items[3] = text;
        items[4] = terms; items[5] = score; items[6] = blob;
        for (i = 0; i < 7; i++) {
            Py_INCREF(items[i]);
            PyTuple_SET_ITEM(o, i, items[i]);
        }
        return o;
    }
    """
    object mp_new_op(object cls, object kind, object key, object version, object text,
                     object terms, object score, object blob)


cdef extern from "Python.h":
    object PyUnicode_DecodeUTF8(const char *s, Py_ssize_t size, const char *errors)


DEF MP_NOGIL_BYTES = 65536     # parse() releases the GIL for records this big
DEF MP_KEEP_BYTES = 4 << 20    # work memory kept between calls (per buffer)

cdef dict _MP_STORES = {"source": MP_STORE_SOURCE, "payload": MP_STORE_PAYLOAD,
                        "none": MP_STORE_NONE}


cdef class MessageParser:
    """The C parser of leaf stream messages for one schema.

    MessageParser(schema, op_type, error_type): schema is Schema.to_dict()
    of a validated pinstack.leaf.message.Schema; op_type the Op NamedTuple
    class; error_type is called as error_type(code, message) for a bad
    message. The rules are msgparse.c's (docs/leaf-stream.md)."""

    cdef mp_parser *p
    cdef mp_work *spare
    cdef object op_type
    cdef object error_type

    def __cinit__(self, dict schema, op_type, error_type):
        cdef char err[ERRLEN]
        cdef mp_schema_def d
        cdef mp_field_def *defs = NULL
        err[0] = 0
        if not (isinstance(op_type, type) and issubclass(op_type, tuple)
                and len(getattr(op_type, "_fields", ())) == 7):
            raise TypeError("op_type must be a NamedTuple class of 7 fields")
        self.op_type = op_type
        self.error_type = error_type
        names = ([(n.encode("utf-8", "surrogatepass"), 1) for n in schema["text"]]
                 + [(n.encode("utf-8", "surrogatepass"), 0) for n in schema["keywords"]])
        import sys
        digits = getattr(sys, "get_int_max_str_digits", lambda: 0)()
        memset(&d, 0, sizeof(d))
        d.store = _MP_STORES[schema["store"]]
        d.max_message_bytes = schema["max_message_bytes"]
        d.max_terms = schema["max_terms"]
        d.int_max_digits = digits
        d.nfields = len(names)
        defs = <mp_field_def *>PyMem_Malloc((len(names) + 1) * sizeof(mp_field_def))
        if defs == NULL:
            raise MemoryError()
        try:
            for i, (name, is_text) in enumerate(names):
                defs[i].name = PyBytes_AS_STRING(name)
                defs[i].len = PyBytes_GET_SIZE(name)
                defs[i].text = is_text
            d.fields = defs
            self.p = mp_parser_new(&d, err, ERRLEN)
        finally:
            PyMem_Free(defs)
        if self.p == NULL:
            raise ValueError("schema: " + err.decode("utf-8", "replace"))
        self.spare = mp_work_new()
        if self.spare == NULL:
            raise MemoryError()

    def __dealloc__(self):
        mp_work_free(self.spare)
        mp_parser_free(self.p)

    cdef mp_work *_take(self) except NULL:
        cdef mp_work *w = self.spare
        self.spare = NULL
        if w == NULL:
            w = mp_work_new()
            if w == NULL:
                raise MemoryError()
        return w

    cdef void _give(self, mp_work *w) noexcept:
        mp_work_clear(w)
        mp_work_trim(w, MP_KEEP_BYTES)
        if self.spare == NULL:
            self.spare = w
        else:
            mp_work_free(w)

    cdef object _error(self, mp_work *w, const mp_result *r):
        """error_type(code, sentence); REPR parts are quoted with repr()."""
        cdef const char *out = mp_work_out(w)
        cdef const mp_part *parts = mp_work_parts(w)
        cdef const mp_part *pt
        if r.status == MP_NOMEM:
            raise MemoryError()
        pieces = []
        for i in range(r.nparts):
            pt = &parts[r.part0 + i]
            s = PyUnicode_DecodeUTF8(out + pt.off, <Py_ssize_t>pt.len, "surrogatepass")
            pieces.append(repr(s) if pt.kind == MP_PART_REPR else s)
        return self.error_type(mp_code(r.status).decode("ascii"), "".join(pieces))

    cdef object _op(self, mp_work *w, const mp_result *r, bytes raw):
        cdef const char *out = mp_work_out(w)
        cdef const mp_span *terms = mp_work_terms(w)
        cdef const mp_span *t
        key = PyUnicode_DecodeUTF8(out + r.key.off, <Py_ssize_t>r.key.len, NULL)
        if r.kind == MP_OP_DELETE:
            return mp_new_op(self.op_type, "delete", key, r.version, None, [], 0.0, b"")
        text = None
        if r.has_text:
            text = PyUnicode_DecodeUTF8(out + r.text.off, <Py_ssize_t>r.text.len, NULL)
        term_list = []
        for i in range(r.nterms):
            t = &terms[r.term0 + i]
            term_list.append(PyUnicode_DecodeUTF8(out + t.off, <Py_ssize_t>t.len, NULL))
        if r.blob == MP_BLOB_SOURCE:
            blob = raw
        elif r.blob == MP_BLOB_OUT:
            blob = PyBytes_FromStringAndSize(out + r.blob_span.off, <Py_ssize_t>r.blob_span.len)
        else:
            blob = b""
        return mp_new_op(self.op_type, "index", key, r.version, text, term_list, r.score, blob)

    def parse(self, raw):
        """One record (bytes-like) -> Op, or raise error_type(code, message)."""
        cdef bytes b = raw if type(raw) is bytes else bytes(raw)
        cdef const char *p = PyBytes_AS_STRING(b)
        cdef size_t n = <size_t>PyBytes_GET_SIZE(b)
        cdef mp_result r
        cdef mp_work *w = self._take()
        try:
            if n >= MP_NOGIL_BYTES:
                with nogil:
                    mp_parse(self.p, w, p, n, &r)
            else:
                mp_parse(self.p, w, p, n, &r)
            if r.status == MP_OK:
                return self._op(w, &r, b)
            raise self._error(w, &r)
        finally:
            self._give(w)


# ---- messages in bulk: write batches and ingest batches (msgbatch.c, logrec.c) ----------
#
# A MessageBatch is a C array of spans into buffers this object keeps
# referenced (request bodies, log read buffers, Kafka payloads); parsing,
# routing, framing and applying run in C with the GIL released. Python
# objects are made only for what is rare: the errors of bad messages.

cdef extern from "logrec.h" nogil:
    enum:
        LR_HEADER_SIZE
        LR_MAX_RECORD_BYTES
        LR_INDEX_INTERVAL
        LR_OK
        LR_BAD_OFFSET
        LR_BAD_LENGTH
        LR_BAD_CRC

    ctypedef struct lr_index:
        int64_t *offsets
        int64_t *positions
        uint32_t n

    ctypedef struct lr_decoded:
        size_t first_pos
        size_t pos
        uint64_t offset
        uint32_t count
        uint64_t nbytes
        int problem
        uint64_t found_offset
        uint32_t found_length
        size_t need

    size_t lr_encode(const char *const *payloads, const size_t *lens, uint32_t n,
                     uint64_t first_offset, uint64_t start_pos, uint64_t *last_index_pos,
                     char *out, lr_index *idx)
    void lr_decode(const char *buf, size_t len, size_t pos, uint64_t offset,
                   uint64_t max_records, int64_t skip_below, uint64_t max_bytes, lr_decoded *out,
                   uint64_t base_pos, uint64_t *last_index_pos, lr_index *idx)
    uint32_t lr_payload_len(const char *buf, size_t pos)


cdef extern from "msgbatch.h" nogil:
    enum:
        MB_NONE

    ctypedef struct mb_msg:
        const char *raw
        size_t len
        int32_t partition
        int64_t where
        const void *from_ "from"
        uint32_t from_index

    ctypedef struct mb_batch:
        mb_msg *msgs
        uint32_t n
        mp_result *res
        uint32_t nparsed
        uint32_t *ops
        uint32_t nops
        uint32_t ndeletes
        uint32_t nbad
        uint32_t first_bad
        int nomem
        mp_work *work

    mb_batch *mb_new()
    void mb_free(mb_batch *b)
    int mb_add(mb_batch *b, const char *raw, size_t len, int32_t partition, int64_t where)
    int mb_add_lines(mb_batch *b, const char *body, size_t len)
    int mb_add_records(mb_batch *b, const char *buf, size_t pos, uint32_t count,
                       int32_t partition, uint64_t first_offset)
    int64_t mb_attach(mb_batch *b, const mb_batch *src, int32_t p, uint64_t first_offset)
    int mb_parse(mb_batch *b, const mp_parser *p, bint halt)
    void mb_route(mb_batch *b, uint32_t nparts, uint32_t *counts)
    size_t mb_framed_size(const mb_batch *b, int32_t p, uint32_t *count, size_t *longest)
    size_t mb_frame(const mb_batch *b, int32_t p, uint64_t first_offset, uint64_t start_pos,
                    uint64_t *last_index_pos, char *out, lr_index *idx)
    int mb_apply(mb_batch *b, ps_segment *s, const ps_older *older, uint32_t op_from,
                 uint32_t op_to, mb_counts *counts, char *err, size_t errlen)


cdef extern from "Python.h":
    object PyBytes_FromStringAndSize_NULL "PyBytes_FromStringAndSize" (void *s, Py_ssize_t n)


cdef inline uint64_t _clamp_u64(object v):
    return 0 if v < 0 else (<uint64_t>v if v < (1 << 63) else (<uint64_t>1 << 63))


def encode_records(payloads, uint64_t first_offset, uint64_t start_pos,
                   uint64_t last_index_pos, size_t max_record_bytes=LR_MAX_RECORD_BYTES):
    """Log records for payloads (logrec.c): (data, last_index_pos, [(offset,
    position)] sparse index entries added). ValueError for a payload over
    max_record_bytes (at most LR_MAX_RECORD_BYTES)."""
    cdef list items = [p if type(p) is bytes else bytes(p) for p in payloads]
    cdef Py_ssize_t n = len(items), i
    cdef const char **ptrs = <const char **>PyMem_Malloc((n + 1) * sizeof(char *))
    cdef size_t *lens = <size_t *>PyMem_Malloc((n + 1) * sizeof(size_t))
    cdef int64_t *io = <int64_t *>PyMem_Malloc((n + 1) * sizeof(int64_t))
    cdef int64_t *ip = <int64_t *>PyMem_Malloc((n + 1) * sizeof(int64_t))
    cdef lr_index idx
    cdef size_t total = 0
    cdef char *out
    try:
        if ptrs == NULL or lens == NULL or io == NULL or ip == NULL:
            raise MemoryError()
        for i in range(n):
            ptrs[i] = PyBytes_AS_STRING(items[i])
            lens[i] = <size_t>PyBytes_GET_SIZE(items[i])
            if lens[i] > max_record_bytes or lens[i] > LR_MAX_RECORD_BYTES:
                raise ValueError(f"a record is at most {max_record_bytes} bytes "
                                 f"(got {lens[i]})")
            total += LR_HEADER_SIZE + lens[i]
        data = PyBytes_FromStringAndSize_NULL(NULL, <Py_ssize_t>total)
        out = PyBytes_AS_STRING(data)
        idx.offsets, idx.positions, idx.n = io, ip, 0
        with nogil:
            lr_encode(ptrs, lens, <uint32_t>n, first_offset, start_pos, &last_index_pos, out,
                      &idx)
        return data, last_index_pos, [(io[i], ip[i]) for i in range(idx.n)]
    finally:
        PyMem_Free(ptrs)
        PyMem_Free(lens)
        PyMem_Free(io)
        PyMem_Free(ip)


def decode_records(buf, size_t pos, uint64_t offset, max_records, skip_below=-1,
                   max_bytes=1 << 62, bint split=True, index_at=None):
    """Check the records of buf[pos:] (logrec.c's lr_decode): (records,
    first_pos, pos, offset, problem, found_offset, found_length, need,
    nbytes: the payload bytes of the records returned, index). index_at:
    (file position of buf[0], last index position) to also get the sparse
    index of the good records: index is then (new last index position,
    [(offset, position)]), else None.
    records: [(offset, payload)] with split, else how many; problem: 0 none,
    1 another offset (found_offset), 2 a length over the maximum
    (found_length), 3 checksum mismatch."""
    cdef bytes data = buf if type(buf) is bytes else bytes(buf)
    cdef size_t n = <size_t>PyBytes_GET_SIZE(data)
    cdef const char *p = PyBytes_AS_STRING(data)
    cdef lr_decoded d
    cdef uint64_t mr = _clamp_u64(max_records), mbytes = _clamp_u64(max_bytes)
    cdef int64_t skip = -1 if skip_below < 0 else (<int64_t>skip_below if skip_below < (1 << 63)
                                                  else <int64_t>((<uint64_t>1 << 63) - 1))
    cdef uint32_t i
    cdef size_t at, ln
    cdef lr_index idx
    cdef lr_index *idxp = NULL
    cdef uint64_t base_pos = 0, last_index_pos = 0
    idx.offsets = idx.positions = NULL
    idx.n = 0
    if index_at is not None:
        base_pos, last_index_pos = index_at
        idx.offsets = <int64_t *>PyMem_Malloc((n // LR_INDEX_INTERVAL + 2) * sizeof(int64_t))
        idx.positions = <int64_t *>PyMem_Malloc((n // LR_INDEX_INTERVAL + 2) * sizeof(int64_t))
        if idx.offsets == NULL or idx.positions == NULL:
            PyMem_Free(idx.offsets)
            PyMem_Free(idx.positions)
            raise MemoryError()
        idxp = &idx
    with nogil:
        lr_decode(p, n, pos, offset, mr, skip, mbytes, &d, base_pos, &last_index_pos, idxp)
    index = None
    if idxp != NULL:
        index = (last_index_pos, [(idx.offsets[i], idx.positions[i]) for i in range(idx.n)])
        PyMem_Free(idx.offsets)
        PyMem_Free(idx.positions)
    if not split:
        records = d.count
    else:
        records = []
        at = d.first_pos
        for i in range(d.count):
            ln = lr_payload_len(p, at)
            records.append((d.offset - d.count + i, p[at + LR_HEADER_SIZE:at + LR_HEADER_SIZE + ln]))
            at += LR_HEADER_SIZE + ln
    return (records, d.first_pos, d.pos, d.offset, d.problem, d.found_offset, d.found_length,
            d.need, d.nbytes, index)


cdef class MessageBatch:
    """Messages in bulk for one schema's parser: see msgbatch.h. Built on
    one thread, then used by one thread at a time (frame() from several
    appenders at once is fine: it only reads)."""

    cdef mb_batch *b
    cdef MessageParser parser
    cdef list refs
    cdef readonly bint parsed

    def __cinit__(self, MessageParser parser):
        self.parser = parser
        self.refs = []
        self.b = mb_new()
        if self.b == NULL:
            raise MemoryError()

    def __dealloc__(self):
        mb_free(self.b)

    cdef inline int _check_open(self) except -1:
        if self.parsed:
            raise ValueError("the batch is parsed already")
        return 0

    def add_ndjson(self, bytes body):
        """The non-blank lines of an NDJSON body, each with its line number."""
        self._check_open()
        self.refs.append(body)
        if mb_add_lines(self.b, PyBytes_AS_STRING(body), <size_t>PyBytes_GET_SIZE(body)) != 0:
            raise MemoryError()

    def add_payloads(self, payloads):
        """Messages (bytes-like), for the write side."""
        cdef Py_ssize_t i = 0
        self._check_open()
        for raw in payloads:
            if type(raw) is not bytes:
                if not isinstance(raw, (bytes, bytearray, memoryview)):
                    raise TypeError(f"message {i}: expected bytes, not {type(raw).__name__}")
                raw = bytes(raw)
            self.refs.append(raw)
            if mb_add(self.b, PyBytes_AS_STRING(raw), <size_t>PyBytes_GET_SIZE(raw), -1, -1):
                raise MemoryError()
            i += 1

    def add_records(self, records):
        """(partition, offset, payload) records, e.g. polled from Kafka."""
        self._check_open()
        for partition, offset, raw in records:
            if type(raw) is not bytes:
                raw = bytes(raw)
            self.refs.append(raw)
            if mb_add(self.b, PyBytes_AS_STRING(raw), <size_t>PyBytes_GET_SIZE(raw),
                      <int32_t>partition, <int64_t>offset):
                raise MemoryError()

    def add_log_run(self, int32_t partition, bytes buf, size_t pos, uint32_t count,
                    uint64_t first_offset):
        """count records framed back to back at buf[pos:], which
        decode_records checked, offsets from first_offset."""
        self._check_open()
        self.refs.append(buf)
        if mb_add_records(self.b, PyBytes_AS_STRING(buf), pos, count, partition,
                          first_offset) != 0:
            raise MemoryError()

    def attach(self, MessageBatch source, int32_t partition, uint64_t first_offset):
        """Read side, before parse(): the messages of partition at offsets
        from first_offset on that source (a parsed, routed write batch)
        appended there take source's verdicts instead of being parsed
        again (msgbatch.c, "HANDING A PARSE OVER"). Returns how many."""
        cdef int64_t n
        self._check_open()
        if not source.parsed:
            raise ValueError("attach: the source batch is not parsed")
        n = mb_attach(self.b, source.b, partition, first_offset)
        if n < 0:
            raise MemoryError()
        if n:
            self.refs.append(source)
        return n

    def parse(self, bint halt=False):
        """Parse every message (GIL released); with halt, stop after the
        first bad one. Returns how many were parsed."""
        cdef int rc
        self._check_open()
        self.parsed = True
        with nogil:
            rc = mb_parse(self.b, self.parser.p, halt)
        if rc != MP_OK:
            raise MemoryError()
        return self.b.nparsed

    def __len__(self):
        return self.b.n

    @property
    def ops(self):
        """Good messages (parsed, valid)."""
        return self.b.nops

    @property
    def deletes(self):
        """Delete ops among them."""
        return self.b.ndeletes

    @property
    def bad(self):
        return self.b.nbad

    @property
    def first_bad(self):
        """Index of the first bad message, or None."""
        return None if self.b.first_bad == MB_NONE else self.b.first_bad

    def to_ops(self):
        """The good messages as the parser's op_type tuples (for callers that
        want Python objects: parse_records, engines without apply_batch)."""
        cdef uint32_t k, i
        cdef const mb_msg *m
        out = []
        for k in range(self.b.nops):
            i = self.b.ops[k]
            m = &self.b.msgs[i]
            raw = PyBytes_FromStringAndSize(m.raw, <Py_ssize_t>m.len)
            out.append(self.parser._op((<const mb_batch *>m.from_).work if m.from_ != NULL
                                       else self.b.work, &self.b.res[i], raw))
        return out

    def errors(self):
        """[(index, partition, where, error)] of the bad messages, in
        order: where is the offset (read side) or the line (NDJSON, else
        None); error is the parser's error_type."""
        cdef uint32_t i
        cdef const mb_msg *m
        out = []
        for i in range(self.b.nparsed):
            if self.b.res[i].status != MP_OK:
                m = &self.b.msgs[i]
                out.append((i, None if m.partition < 0 else m.partition,
                            None if m.where < 0 else m.where,
                            self.parser._error(self.b.work, &self.b.res[i])))
        return out

    def route(self, uint32_t partitions):
        """Write side: give each good message its key's partition
        (crc32(key) % partitions); returns the count per partition."""
        cdef uint32_t *counts = <uint32_t *>calloc(partitions + 1, sizeof(uint32_t))
        if counts == NULL:
            raise MemoryError()
        try:
            with nogil:
                mb_route(self.b, partitions, counts)
            return [counts[i] for i in range(partitions)]
        finally:
            free(counts)

    def frame(self, int32_t partition, uint64_t first_offset, uint64_t start_pos,
              uint64_t last_index_pos, size_t max_record_bytes=LR_MAX_RECORD_BYTES):
        """Write side: partition's good messages as log records from
        first_offset at file position start_pos: (data, records,
        last_index_pos, [(offset, position)] sparse index entries added)."""
        cdef uint32_t count = 0, i
        cdef size_t longest = 0
        cdef size_t total = mb_framed_size(self.b, partition, &count, &longest)
        cdef lr_index idx
        cdef char *out
        if longest > max_record_bytes or longest > LR_MAX_RECORD_BYTES:
            raise ValueError(f"a record is at most {max_record_bytes} bytes (got {longest})")
        idx.offsets = <int64_t *>PyMem_Malloc((count + 1) * sizeof(int64_t))
        idx.positions = <int64_t *>PyMem_Malloc((count + 1) * sizeof(int64_t))
        idx.n = 0
        try:
            if idx.offsets == NULL or idx.positions == NULL:
                raise MemoryError()
            data = PyBytes_FromStringAndSize_NULL(NULL, <Py_ssize_t>total)
            out = PyBytes_AS_STRING(data)
            with nogil:
                mb_frame(self.b, partition, first_offset, start_pos, &last_index_pos, out, &idx)
            return (data, count, last_index_pos,
                    [(idx.offsets[i], idx.positions[i]) for i in range(idx.n)])
        finally:
            PyMem_Free(idx.offsets)
            PyMem_Free(idx.positions)

    def apply(self, RealtimeSegment segment, older, uint32_t op_from, uint32_t op_to):
        """Read side: ops [op_from, op_to) (good messages, in order) into the
        segment, GIL released. Returns (added, stale, deleted, deletes)."""
        cdef mb_counts counts
        cdef _Sources olds = None
        cdef const ps_older *olp = NULL
        cdef char err[ERRLEN]
        cdef int rc
        err[0] = 0
        memset(&counts, 0, sizeof(counts))
        if older:
            olds = _Sources(older)
            olp = olds.as_older()
        with nogil:
            rc = mb_apply(self.b, segment.seg, olp, op_from, op_to, &counts, err, ERRLEN)
        if rc != PS_OK:
            _raise(rc, err)
        return counts.added, counts.stale, counts.deleted, counts.deletes

    def positions(self, stop=None):
        """Read side: {partition: offset after its last message} over the
        messages before index stop (all by default)."""
        cdef uint32_t i, end = self.b.n if stop is None else min(<uint32_t>stop, self.b.n)
        cdef const mb_msg *m = self.b.msgs
        out = {}
        for i in range(end):  # a Python object only where a partition's run ends
            if i + 1 == end or m[i + 1].partition != m[i].partition:
                out[m[i].partition] = m[i].where + 1
        return out

    def rewind(self, uint32_t start):
        """Read side: {partition: offset of its first message} over the
        messages from index start on: where to read again from."""
        cdef uint32_t i
        cdef const mb_msg *m = self.b.msgs
        out = {}
        for i in range(start, self.b.n):
            if (i == start or m[i - 1].partition != m[i].partition) \
                    and m[i].partition not in out:
                out[m[i].partition] = m[i].where
        return out
