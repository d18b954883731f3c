"""pinstack-leaf: realtime search.

The segments live in C (src/_core/index/); this package gives them their
public names (pinstack/_core/_index.pyi documents them), and holds the
leaf around them: engine.py (the LSM: flush, compaction, manifest,
restart), service.py (stream ingestion, metrics), server.py (HTTP),
cli.py (pinstack-leaf).

    from pinstack.leaf import RealtimeSegment
    seg = RealtimeSegment(writer_threads=2)
    seg.add(b"pin:1", 1, text="a cat on a mat", terms=["lang:en"], score=0.5)
    seg.search("cat -dog", k=10)
"""

from pinstack._core._index import (
    Hit,
    RealtimeSegment,
    SegmentFile,
    SegmentFileError,
    SegmentFull,
    SegmentSealed,
    parse_query,
)

__all__ = ["Hit", "RealtimeSegment", "SegmentFile", "SegmentFileError", "SegmentFull",
           "SegmentSealed", "parse_query"]
