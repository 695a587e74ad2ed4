"""Real servers for tests: a redis-server on a free port (never the machine's own on 6379), and a
reader of a service's Prometheus /metrics."""
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from inferline.local_redis import free_port, local_redis_server as redis_server

__all__ = ["free_port", "redis_server", "scrape_metrics"]


def scrape_metrics(port: int) -> dict[str, dict[tuple, float]]:
    """{sample name: {sorted label items: value}} from a real GET of /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples
