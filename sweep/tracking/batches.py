"""What MLflow's ``log_batch`` calls carry: values as strings within its limits, metric rows
stamped now, and one logical batch split into as few calls as its per-call limits allow."""

from __future__ import annotations

import time
from collections.abc import Iterator

from sweep.adapters import batch_limits
from sweep.stores.urls import redact

MetricRow = tuple[str, float, int, int]  # key, value, timestamp (ms), step


def logged_strings(values: dict, limit: int) -> dict[str, str]:
    """Param or tag values as MLflow takes them: str(), passwords redacted, cut to ``limit`` characters."""
    texts = {key: redact(str(value)) for key, value in values.items()}
    return {key: text if len(text) <= limit else text[: limit - 1] + "…" for key, text in texts.items()}


def tag_strings(tags: dict) -> dict[str, str]:
    """Tag values as MLflow takes them (logged_strings, cut to its longest tag value)."""
    return logged_strings(tags, batch_limits().tag_chars)


def metric_rows(values: dict[str, float | None], step: int) -> list[MetricRow]:
    """Metric rows stamped now; None values (curves not monitored) are left out."""
    now = int(time.time() * 1000)
    return [(key, float(value), now, step) for key, value in values.items() if value is not None]


def batches(metrics: list, params: list, tags: list) -> Iterator[tuple[list, list, list]]:
    """Split one logical batch into log_batch calls within MLflow's per-call limits."""
    limits = batch_limits()
    while metrics or params or tags:
        p, params = params[: limits.params], params[limits.params :]
        t, tags = tags[: limits.tags], tags[limits.tags :]
        room = min(limits.metrics, limits.entities - len(p) - len(t))  # (1000 entities per call in all)
        m, metrics = metrics[:room], metrics[room:]
        yield m, p, t
