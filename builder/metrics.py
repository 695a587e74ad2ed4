"""The builder's Prometheus metrics (docs/serving.md, "Metrics")."""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from inferline.metrics import BUILD_BUCKETS

BUILD_DURATION = Histogram("inferline_build_duration_seconds",
                           "One engine build, from taking the per-name lock to registered in Redis; outcome: "
                           "success, refused (bad input) or failed", ["quantization", "outcome"],
                           buckets=BUILD_BUCKETS)
BUILDS_TOTAL = Counter("inferline_builds_total", "Engine builds by quantization scheme and outcome",
                       ["quantization", "outcome"])
BUILDS_IN_PROGRESS = Gauge("inferline_builds_in_progress", "Engine builds running or waiting for their name's lock")
