"""pinstack-leaf: realtime search.

The realtime segment lives in C (src/_core/index/); this package gives it
its public names. See pinstack/_core/_index.pyi for the whole API.

    from pinstack.leaf import RealtimeSegment
    seg = RealtimeSegment(writer_threads=2)
    seg.add(b"pin:1", 1, text="a cat on a mat", terms=["lang:en"], score=0.5)
    seg.search("cat -dog", k=10)
"""

from pinstack._core._index import (
    Hit,
    RealtimeSegment,
    SegmentFull,
    SegmentSealed,
    parse_query,
)

__all__ = ["Hit", "RealtimeSegment", "SegmentFull", "SegmentSealed", "parse_query"]
