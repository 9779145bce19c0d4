"""How the site writes numbers: significant figures, readable units, a mean with its CI."""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Sequence

__all__ = ["ci95", "fmt", "fmt_delta", "fmt_mean", "mean_sd", "scale", "t975"]

# Two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom.
_T975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)  # fmt: skip


def t975(df: int) -> float:
    """Student's t quantile for a two-sided 95 % interval (table, then Cornish-Fisher)."""
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


def mean_sd(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample SD of one cell's seeds, exactly rounded (:func:`statistics.fmean`,
    :func:`statistics.stdev`), so no figure depends on the order the seeds are summed in.
    The mean is None without values; the SD None below two, NaN past a non-finite one."""
    mean = statistics.fmean(values) if values else None
    sd = None
    if len(values) > 1:
        sd = statistics.stdev(values) if all(map(math.isfinite, values)) else math.nan
    return mean, sd


def ci95(sd: float | None, n: int) -> float | None:
    """Half-width of the 95 % CI of a mean of ``n`` seeds; ``None`` when ``n < 2``."""
    if n < 2 or sd is None:
        return None
    return t975(n - 1) * sd / math.sqrt(n)


_BINARY = ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB"))
_COUNT = ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K"))
_SI = ((1e9, "G"), (1e6, "M"), (1e3, "k"))
_TIME = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0}
_TIME_STEPS = (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9))


@functools.lru_cache(maxsize=512)
def _ladder(unit: str) -> tuple[tuple[float, float, str], ...]:
    """(from size, divisor, unit text) rungs for ``unit``, largest first: bytes in
    KiB/MiB/GiB, counts in K/M/B, times in s…ns, anything else SI prefixes past 10 000."""
    if unit == "bytes":
        return (*((d, d, name) for d, name in _BINARY), (0.0, 1.0, "B"))
    if unit == "count":
        return (*((d, d, name) for d, name in _COUNT), (0.0, 1.0, ""))
    if unit in _TIME:
        base = _TIME[unit]
        return (*((f / base, f / base, name) for name, f in _TIME_STEPS), (0.0, 1.0, unit))
    return (*((10 * d, d, f"{p} {unit}".strip()) for d, p in _SI), (0.0, 1.0, unit))


def scale(size: float, unit: str) -> tuple[float, str]:
    """The divisor and unit text that keep a number of this size short and readable."""
    size = abs(size)
    for start, divisor, text in _ladder(unit):
        if size >= start:
            return divisor, text
    return 1.0, unit


def fmt(value: float | None, unit: str = "", digits: int = 4) -> str:
    """``value`` with ``digits`` significant figures and a readable unit (``—`` if None).

    Bytes use KiB/MiB/GiB, counts K/M/B, times ns…s, anything else SI prefixes past 10 000.
    """
    if value is None:
        return "—"
    if not math.isfinite(value):
        return f"{value} {unit}".strip()
    divisor, text = scale(value, unit)
    return f"{value / divisor:.{digits}g} {text}".strip()


def fmt_mean(mean: float, ci: float | None, unit: str) -> tuple[str, str, str]:
    """(mean, "± ci", unit) with the CI in the mean's scale, so the two read together;
    the CI keeps two significant figures, written out (``± 130``, not ``± 1.3e+02``)."""
    if not math.isfinite(mean):
        return fmt(mean, unit), "", ""
    divisor, text = scale(mean, unit)
    ci_text = ""
    if ci and math.isfinite(ci):
        half = ci / divisor
        places = 1 - math.floor(math.log10(half))
        ci_text = f"± {half:.2g}" if places > 6 else f"± {half:.{max(0, places)}f}"
    return f"{mean / divisor:.4g}", ci_text, text



def fmt_delta(value: float, reference: float, unit: str, quality: bool) -> str:
    """A row against its reference: a quality as a signed difference (percentages in
    points), a cost as a ratio ("5.8× less", "1.3× more"); "" where neither means much
    (a cost within 0.5 % of the reference's, or one that is not positive)."""
    if not (math.isfinite(value) and math.isfinite(reference)):
        return ""
    if quality:
        difference = value - reference
        if difference == 0:
            return "±0"
        sign = "+" if difference > 0 else "−"
        return f"{sign}{fmt(abs(difference), 'pt' if unit == '%' else unit, 2)}"
    if value <= 0 or reference <= 0:
        return ""
    ratio = value / reference
    if abs(ratio - 1) < 0.005:
        return ""  # a cost the method does not change says nothing: no small print
    return f"{1 / ratio:.2g}× less" if ratio < 1 else f"{ratio:.2g}× more"
