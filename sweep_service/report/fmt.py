"""How figures are written for people: one place, so the page, `recommend` and the
charts never disagree. Every function takes None and returns "-" for it."""
from __future__ import annotations

import math
from datetime import datetime
from typing import Any

MB = 1_000_000  # model sizes are in MB of 10^6 bytes


def pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value * 100:.{digits}f}%"


def budget(value: float | None) -> str:
    """The share of its fine-tune a trial trained: 'full', or e.g. '25 %'."""
    if value is None or value >= 1.0:
        return "full"
    return f"{value * 100:.3g} %"


def pct_tick(value: float) -> str:
    """An axis tick of a fraction, with the decimals it needs: 0.925 -> '92.5%', 0.9 -> '90%'."""
    return f"{round(value * 100, 4) + 0.0:g}%"  # + 0.0: no "-0%"


def pct_pm(mean: float | None, half_width: float | None, digits: int = 1) -> str:
    """A mean fraction and its interval's half-width: '91.2 ± 0.8%'; the mean alone without one."""
    if mean is None or half_width is None:
        return pct(mean, digits)
    return f"{mean * 100:.{digits}f} ± {half_width * 100:.{digits}f}%"


def points_pm(mean: float | None, half_width: float | None) -> str:
    """A mean accuracy difference and its interval's half-width, in points: '+1.2 ± 0.8 pt'."""
    if mean is None or half_width is None:
        return points(mean)
    return f"{round(mean * 100, 1) + 0.0:+.1f} ± {half_width * 100:.1f} pt"


def ms_pm(mean: float | None, half_width: float | None) -> str:
    if mean is None or half_width is None:
        return ms(mean)
    return f"{mean:.3g} ± {half_width:.2g} ms"


def points(value: float | None) -> str:
    """An accuracy difference (a fraction) in percentage points, signed."""
    return "-" if value is None else f"{round(value * 100, 1) + 0.0:+.1f} pt"  # + 0.0: no "-0.0"


def count(value: float | None) -> str:
    """12345678 -> '12.3 M'; for parameters and MACs."""
    if value is None:
        return "-"
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.3g} {unit}"
    return f"{value:.0f}"


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g} ms"


def size(value_bytes: float | None) -> str:
    return "-" if value_bytes is None else f"{value_bytes / MB:.3g} MB"


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 3600:
        return f"{value / 3600:.1f} h"
    if value >= 120:
        return f"{value / 60:.1f} min"
    return f"{value:.1f} s"


def rate(value: float | None) -> str:
    """A pruning rate: 0.3 -> '30%', 0.125 -> '12.5%', 0.99999 -> '99.999%': to four
    decimals, and more where fewer would read 0% or 100% for a rate that is neither."""
    if value is None:
        return "-"
    percent = value * 100
    decimals = 4
    text = f"{round(percent, decimals):g}"
    while text in ("0", "100") and 0 < percent < 100 and decimals < 15:
        decimals += 1
        text = f"{percent:.{decimals}f}".rstrip("0").rstrip(".")
    return text + "%"


def pruning(row: dict[str, Any]) -> str:
    """What pruning did to a model, in its own terms: "30% params removed" (structured:
    parameters are gone) or "50% weights zeroed" (unstructured: all stay, some are zero)."""
    if row.get("kind") == "baseline":
        return "baseline"
    if row.get("structure") == "unstructured":
        return f"{pct(row.get('weights_zeroed') or 0.0, 0)} weights zeroed"
    return f"{pct(row.get('param_reduction') or 0.0, 0)} params removed"


def when(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


def parse_count(text: str) -> int:
    """'2.5M', '300k', '1.2G', '2500000', '2.5e6' -> an integer count (argparse type)."""
    units = {"k": 1e3, "m": 1e6, "g": 1e9}
    t = text.strip().replace("_", "").replace(",", "")
    factor = units.get(t[-1:].lower(), 1)
    try:
        value = float(t[:-1] if factor != 1 else t) * factor
    except ValueError:
        raise ValueError(f"{text!r} is not a count; write e.g. 2500000, 2.5M or 300k") from None
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite count; write e.g. 2500000, 2.5M or 300k")
    if value <= 0:
        raise ValueError(f"{text!r} must be positive")
    return int(value)


def parse_fraction(text: str) -> float:
    """'0.9' or '90%' -> 0.9 (argparse type for accuracies)."""
    t = text.strip()
    try:
        value = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise ValueError(f"{text!r} is not an accuracy; write a fraction (0.9) or a percent (90%)") from None
    if not 0 <= value <= 1:
        raise ValueError(f"{text!r} is outside 0..1; write a fraction (0.9) or a percent (90%)")
    return value


def jsonable(value: Any) -> Any:
    """Datetimes as ISO 8601 text; NaN and infinities (not JSON) as None."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
