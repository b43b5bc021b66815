"""Prometheus metrics (``rpvd --metrics-listen IP:PORT``), read at scrape time.

Nothing is counted twice: the collector reads the RPV clients' own counters and the VGs' stale
state when Prometheus asks, so the I/O path pays only for the counters rpvstat uses anyway.
"""

from __future__ import annotations

from prometheus_client import start_http_server
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from rpv import buffers
from rpv.client.device import RPVClient
from rpv.client.stats import BUCKETS


class GLVMCollector:
    def __init__(self, devices, lvm):
        self.devices = devices
        self.lvm = lvm

    def collect(self):
        ops = CounterMetricFamily("glvm_rpv_requests", "Completed RPV client requests",
                                  labels=["device", "op"])
        nbytes = CounterMetricFamily("glvm_rpv_bytes", "Bytes moved by RPV clients",
                                     labels=["device", "op"])
        errors = CounterMetricFamily("glvm_rpv_errors", "RPV requests answered with an error",
                                     labels=["device"])
        timeouts = CounterMetricFamily("glvm_rpv_timeouts", "RPV I/O timeouts (io_timeout)",
                                       labels=["device"])
        up = GaugeMetricFamily("glvm_rpv_online", "1 when the RPV client is usable",
                               labels=["device", "server"])
        latency = HistogramMetricFamily("glvm_rpv_io_seconds", "RPV request latency",
                                        labels=["device"])
        for name, rt in list(self.devices.disks.items()):
            if not isinstance(rt, RPVClient):
                continue
            st = rt.stats
            ops.add_metric([name, "read"], st.reads)
            ops.add_metric([name, "write"], st.writes)
            nbytes.add_metric([name, "read"], st.bytes_read)
            nbytes.add_metric([name, "write"], st.bytes_written)
            errors.add_metric([name], st.errors)
            timeouts.add_metric([name], st.timeouts)
            up.add_metric([name, rt.server_addr], 1 if rt.state.value == "online" else 0)
            cumulative, buckets = 0, []
            for bound, count in zip((*map(str, BUCKETS), "+Inf"), st.histogram, strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            latency.add_metric([name], buckets, st.io_seconds)
        yield from (ops, nbytes, errors, timeouts, up, latency)
        stale = GaugeMetricFamily("glvm_vg_stale_pps", "Stale physical partitions",
                                  labels=["vg"])
        online = GaugeMetricFamily("glvm_vg_online", "1 when the VG is varied on and open",
                                   labels=["vg"])
        resync = GaugeMetricFamily("glvm_vg_resync_running", "1 while a resync runs",
                                   labels=["vg"])
        for name, group in list(self.lvm.vgs.items()):
            stale.add_metric([name], group.vgsa.stale_count())
            online.add_metric([name], 1 if group.online else 0)
            resync.add_metric([name], 1 if group.resync_task and not group.resync_task.done()
                              else 0)
        yield from (stale, online, resync)
        fill = GaugeMetricFamily("glvm_async_cache_fill_ratio", "I/O cache use (0-1) of an "
                                 "asynchronous mirror pool", labels=["vg", "pool"])
        lag_bytes = GaugeMetricFamily("glvm_async_lag_bytes", "Bytes written here and not yet "
                                      "at the remote site", labels=["vg", "pool"])
        lag_seconds = GaugeMetricFamily("glvm_async_lag_seconds", "Age of the oldest write "
                                        "not yet at the remote site", labels=["vg", "pool"])
        hwm = CounterMetricFamily("glvm_async_hwm_hits", "Times writes waited at the "
                                  "high-water mark", labels=["vg", "pool"])
        for row in self.lvm.asyncs.stats():
            key = [row["vg"], row["pool"]]
            fill.add_metric(key, row.get("cache_fill_percent", 0.0) / 100)
            lag_bytes.add_metric(key, row.get("pending_bytes", 0))
            lag_seconds.add_metric(key, row.get("lag_seconds", 0.0))
            hwm.add_metric(key, row.get("hwm_hits", 0))
        yield from (fill, lag_bytes, lag_seconds, hwm)
        pool = buffers.shared()
        had = CounterMetricFamily("glvm_payload_buffers", "Large WRITE payload buffers, by "
                                  "whether they were made afresh or reused", labels=["how"])
        had.add_metric(["allocated"], pool.allocated)
        had.add_metric(["reused"], pool.reused)
        free = GaugeMetricFamily("glvm_payload_buffers_free_bytes",
                                 "Bytes of payload buffers kept for reuse")
        free.add_metric([], pool.free_bytes)
        yield from (had, free)


def serve(host: str, port: int, devices, lvm) -> None:
    registry = CollectorRegistry()
    registry.register(GLVMCollector(devices, lvm))
    start_http_server(port, addr=host, registry=registry)
