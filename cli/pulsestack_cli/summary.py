"""A live summary from the services' own /metrics: received, stored, rate, backlog, rejected."""

from __future__ import annotations

import time
import urllib.request
from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def scrape(url: str) -> Samples:
    samples: Samples = defaultdict(dict)
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return samples
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name][tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for k, v in samples.get(name, {}).items() if want <= set(k))


def histogram_quantile(samples: Samples, name: str, q: float) -> float | None:
    """The q-quantile of a histogram since the service started, by linear interpolation in its buckets."""
    buckets: dict[float, float] = defaultdict(float)
    for labels, value in samples.get(f"{name}_bucket", {}).items():
        le = dict(labels)["le"]
        buckets[float("inf") if le == "+Inf" else float(le)] += value
    if not buckets or not buckets[float("inf")]:
        return None
    target = q * buckets[float("inf")]
    lower, below = 0.0, 0.0
    for bound in sorted(buckets):
        if buckets[bound] >= target:
            if bound == float("inf"):
                return lower
            share = (target - below) / (buckets[bound] - below) if buckets[bound] > below else 1.0
            return lower + (bound - lower) * share
        lower, below = bound, buckets[bound]
    return lower


class Summary:
    def __init__(self, urls: dict[str, str]) -> None:
        self.urls = urls
        self._last: tuple[float, float] | None = None

    def line(self) -> str:
        s = {name: scrape(url) for name, url in self.urls.items()}
        udp, http = s.get("ingest-udp", {}), s.get("ingest-http", {})
        pulse, raw = s.get("pulse-processor", {}), s.get("raw-processor", {})
        stored = {
            p: total(pulse, "pulsestack_end_to_end_seconds_count", protocol=p) for p in ("nbiot", "sigfox")
        }
        all_stored = sum(stored.values())
        now = time.monotonic()
        rate = 0.0
        if self._last:
            rate = (all_stored - self._last[1]) / max(1e-9, now - self._last[0])
        self._last = (now, all_stored)
        rejected = total(udp, "pulsestack_ingest_rejected_total") + total(http, "pulsestack_ingest_rejected_total")
        backlog = total(raw, "pulsestack_stream_pending") + total(pulse, "pulsestack_stream_pending")
        p50 = histogram_quantile(pulse, "pulsestack_end_to_end_seconds", 0.5)
        p99 = histogram_quantile(pulse, "pulsestack_end_to_end_seconds", 0.99)
        latency = f"{p50 * 1000:.0f}/{p99 * 1000:.0f} ms" if p50 is not None and p99 is not None else "-"
        return (
            f"received nbiot {total(udp, 'pulsestack_ingest_received_total'):>9,.0f}"
            f" sigfox {total(http, 'pulsestack_ingest_received_total'):>9,.0f} | stored nbiot {stored['nbiot']:>9,.0f}"
            f" sigfox {stored['sigfox']:>9,.0f} | {rate:7,.0f} readings/s | backlog {backlog:>6,.0f}"
            f" | rejected {rejected:,.0f} | end-to-end p50/p99 {latency}"
        )
