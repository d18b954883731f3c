"""pinstack.leaf.stream: the leaf's ingestion streams.

    record.py    the on-disk record format (checksummed, self-numbered)
    log.py       Log: the embedded partitioned log, group commit, recovery,
                 retention
    source.py    Source (the interface the leaf reads through) and
                 EmbeddedSource (a Source over a Log)

KafkaSource lives in pinstack.leaf.kafka_source (it imports confluent_kafka,
which the embedded path does not need). docs/leaf-stream.md is the
reference for the formats and guarantees.
"""

from .log import CorruptRecordError, Log, LogClosed, LogError, OffsetOutOfRange, Recovery
from .source import EmbeddedSource, Record, Source

__all__ = [
    "CorruptRecordError",
    "EmbeddedSource",
    "Log",
    "LogClosed",
    "LogError",
    "OffsetOutOfRange",
    "Record",
    "Recovery",
    "Source",
]
