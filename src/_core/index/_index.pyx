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
from libc.stdint cimport int64_t, uint32_t, uint64_t
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
                    object older=None) except -1:
        """docs: list of 6-tuples, already type-checked by the callers'
        unpacking below. Builds ps_doc_in[] and runs the C writer."""
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
                rc = ps_seg_add_batch(self.seg, ins, <uint32_t>n, threaded, olp, ids, added,
                                      err, ERRLEN)
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
# can wait a whole switch interval behind another thread); parse_records()
# releases it once for the whole batch.

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

    def parse_records(self, records, bint halt=False):
        """A polled batch of (partition, offset, payload) -> (ops, bad), bad
        being [(partition, offset, error)] in order. With halt, parsing stops
        at the first bad record (bad holds it alone). The GIL is released
        while the batch is parsed."""
        cdef list items = []
        cdef Py_ssize_t n, i, done = 0
        cdef const char **ptrs = NULL
        cdef size_t *lens = NULL
        cdef mp_result *res = NULL
        cdef mp_work *w = NULL
        cdef int rc
        for partition, offset, payload in records:
            items.append((partition, offset,
                          payload if type(payload) is bytes else bytes(payload)))
        n = len(items)
        if n == 0:
            return [], []
        ptrs = <const char **>PyMem_Malloc(n * sizeof(char *))
        lens = <size_t *>PyMem_Malloc(n * sizeof(size_t))
        res = <mp_result *>PyMem_Malloc(n * sizeof(mp_result))
        try:
            if ptrs == NULL or lens == NULL or res == NULL:
                raise MemoryError()
            for i in range(n):
                raw = (<tuple>items[i])[2]
                ptrs[i] = PyBytes_AS_STRING(raw)
                lens[i] = <size_t>PyBytes_GET_SIZE(raw)
            w = self._take()
            with nogil:
                while done < n:
                    rc = mp_parse(self.p, w, ptrs[done], lens[done], &res[done])
                    done += 1
                    if rc == MP_NOMEM or (rc != MP_OK and halt):
                        break
            ops = []
            bad = []
            for i in range(done):
                item = <tuple>items[i]
                if res[i].status == MP_OK:
                    ops.append(self._op(w, &res[i], item[2]))
                else:
                    bad.append((item[0], item[1], self._error(w, &res[i])))
            return ops, bad
        finally:
            if w != NULL:
                self._give(w)
            PyMem_Free(ptrs)
            PyMem_Free(lens)
            PyMem_Free(res)
