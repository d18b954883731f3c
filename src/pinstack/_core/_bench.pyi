"""Type stub for pinstack._core._bench (built from src/_core/bench/_bench.pyx).

It lives here, beside where the compiled module is installed, because type
checkers look for a stub next to the module, not next to its .pyx source.
Call it through pinstack.bench, which builds the flat options dict.
"""

from typing import Any, Iterable

#: Percentiles reported for every histogram, as (key, percent).
PERCENTILES: tuple[tuple[str, float], ...]
#: Buckets of one latency histogram.
HISTOGRAM_BUCKETS: int

class BenchError(RuntimeError):
    """A run that could not start or was cut short.

    kind: "config" | "connect" | "run" | "system" | "stopped".
    result: the partial results dict when load ran, else None.
    """

    kind: str
    result: dict[str, Any] | None
    def __init__(
        self, message: str, kind: str = "run", result: dict[str, Any] | None = None
    ) -> None: ...

def run(options: dict[str, Any]) -> dict[str, Any]:
    """Run the load described by the normalised `options`, GIL released.

    Raises BenchError (see its kinds); TypeError for a missing option.
    """

def histogram(values_us: Iterable[float]) -> dict[str, Any]:
    """Record `values_us` in a C histogram; return its summary as run() reports it."""
