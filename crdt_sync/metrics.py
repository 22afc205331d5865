"""``GET /metrics``: Prometheus text exposition of what the node is doing.

Hot-path counts are plain integers (:mod:`rooms.stats`) read at scrape time by a
custom collector, the store's included (:meth:`persistence.store.Store.stats`: its
commit histograms are counted by the store's writer and read here); the delivery
histogram gets an observation per sampled delivery. Each app has its own registry
(tests run several).

=============================================  =========================================
``crdt_sync_rooms``                            loaded rooms
``crdt_sync_connections{kind}``                open Yjs connections / frame subscribers
``crdt_sync_messages_received_total{type}``    messages from clients, by message type
``crdt_sync_received_bytes_total{type}``       their bytes
``crdt_sync_messages_sent_total{type}``        messages written to clients (a broadcast to
                                               N clients counts N)
``crdt_sync_sent_bytes_total{type}``           their bytes
``crdt_sync_delivery_latency_seconds``         update received → written to a receiver's
                                               socket (fan-out latency; 1 in 16 sampled)
``crdt_sync_send_queue_overflows_total``       clients closed with 4429
``crdt_sync_blocked_writes_total``             writes that waited for a client's socket
``crdt_sync_server_closes_total{code}``        connections closed by the server, by code
``crdt_sync_store_commit_seconds``             one group commit, BEGIN to COMMIT (fsync)
``crdt_sync_store_commit_ops``                 writes per group commit
``crdt_sync_store_failed_batches_total``       group commits rolled back
``crdt_sync_store_queue``                      writes waiting for the writer
``crdt_sync_frames_total``                     SyncFrames logged
``crdt_sync_mutations_total{status}``          HTTP mutations by result status
``crdt_sync_throttled_total``                  delta/records requests refused with 429
``crdt_sync_task_failures_total{task}``        supervised tasks that failed, by task (loops
                                               are restarted; per-room tasks are not)
``crdt_sync_loop_up{task}``                    1 while a supervised loop runs, 0 while it
                                               waits to restart
``crdt_sync_values_conformed_total{reason}``   record values projected into the value
                                               model (first time per field of a loaded
                                               record): non_finite, invalid_unicode,
                                               too_deep, too_large, not_json
``crdt_sync_store_refused_frame_batches_total``  frame batches the store refused (a value
                                               it could not read back)
``crdt_sync_frame_listener_failures_total``    publications of committed frames that raised
``crdt_sync_frame_send_failures_total``        frame subscribers closed with 1011 because
                                               their frames could not be encoded
``crdt_sync_auth_refused_total``               requests and connections the front door
                                               refused (401/403/429), one audit line each
``crdt_sync_readonly_updates_refused_total``   Yjs document updates dropped because the
                                               connection's grant is read-only
``crdt_sync_rate_limited_total{kind}``         refused by a rate limit: http, ws
``crdt_sync_sessions``                         live sessions revocation can close
``crdt_sync_node_info{node}``                  1, labelled with this node's id
``crdt_sync_bus_messages_total{bus,event}``    Redis bus messages (rooms, frames): published,
                                               dropped, delivered, received, malformed
``crdt_sync_bus_reconnects_total{bus}``        reconnections to Redis
``crdt_sync_bus_up{bus}``                      1 while connected to Redis
``crdt_sync_versions_total{kind}``             document versions: auto, on_demand taken;
                                               retired by retention
``crdt_sync_webhook_attempts_total{outcome}``  webhook POSTs: ok (2xx), error (retried),
                                               parked (retry period over)
``crdt_sync_webhook_in_flight``                webhook POSTs awaiting an answer
=============================================  =========================================

No metric has a doc name, an org or an actor as a label: ``/metrics`` (admin token
when auth is on) says how the node does, never what any tenant holds.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.utils import floatToGoString
from starlette.requests import Request
from starlette.responses import Response

from persistence.store import COMMIT_OPS_BUCKETS, COMMIT_SECONDS_BUCKETS, StoreStats
from rooms.stats import MESSAGE_TYPES, TRAFFIC

from .records.projection import CONFORMED

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


def _memory(manager: Any) -> Iterator[Metric]:
    """The garbage collector's share in memory (see rooms/memory.py)."""
    reclaimer = getattr(manager, "reclaimer", None)
    yield GaugeMetricFamily(
        "crdt_sync_gc_frozen_objects",
        "Objects alive at startup, out of the cyclic collector's reach.",
        value=gc.get_freeze_count(),
    )
    yield CounterMetricFamily(
        "crdt_sync_unload_collections",
        "Full garbage collections run after waves of room unloads.",
        value=reclaimer.collections if reclaimer is not None else 0,
    )
    yield CounterMetricFamily(
        "crdt_sync_unload_collected_objects",
        "Unreachable objects those collections found.",
        value=reclaimer.collected if reclaimer is not None else 0,
    )


class _NodeCollector:
    """Reads the node's counters and gauges at scrape time."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime
        self.created = time.time()  # of the commit histograms (their ``_created``)

    def collect(self) -> Iterator[Metric]:
        runtime = self.runtime
        rooms = GaugeMetricFamily("crdt_sync_rooms", "Loaded rooms.")
        connections = GaugeMetricFamily(
            "crdt_sync_connections", "Open connections.", labels=["kind"]
        )
        manager = runtime._manager
        rooms.add_metric([], len(manager.rooms) if manager is not None else 0)
        connections.add_metric(["yjs"], manager.connection_count if manager is not None else 0)
        connections.add_metric(["frames"], len(runtime.hub))
        yield rooms
        yield connections
        yield from _memory(manager)
        for name, help_text, values in (
            ("crdt_sync_messages_received", "Messages received from clients.", TRAFFIC.received),
            ("crdt_sync_received_bytes", "Bytes of messages received.", TRAFFIC.received_bytes),
            ("crdt_sync_messages_sent", "Messages written to clients.", TRAFFIC.sent),
            ("crdt_sync_sent_bytes", "Bytes of messages written.", TRAFFIC.sent_bytes),
        ):
            family = CounterMetricFamily(name, help_text, labels=["type"])
            for kind, value in zip(MESSAGE_TYPES, values, strict=True):
                family.add_metric([kind], value)
            yield family
        yield CounterMetricFamily(
            "crdt_sync_send_queue_overflows",
            "Clients closed because they stopped reading (4429).",
            value=TRAFFIC.overflows,
        )
        yield CounterMetricFamily(
            "crdt_sync_blocked_writes",
            "Writes that had to wait for a client's socket to drain.",
            value=TRAFFIC.blocked_writes,
        )
        closes = CounterMetricFamily(
            "crdt_sync_server_closes", "Connections closed by the server.", labels=["code"]
        )
        for code, count in sorted(TRAFFIC.closes.items()):
            closes.add_metric([str(code)], count)
        yield closes
        store = runtime.store
        stats = store.stats() if store is not None else StoreStats()
        yield self._histogram(
            "crdt_sync_store_commit_seconds",
            "One group commit, BEGIN to COMMIT.",
            COMMIT_SECONDS_BUCKETS,
            stats.commit_seconds_buckets,
            stats.commits,
            stats.commit_seconds_sum,
        )
        yield self._histogram(
            "crdt_sync_store_commit_ops",
            "Writes per group commit.",
            COMMIT_OPS_BUCKETS,
            stats.commit_ops_buckets,
            stats.commits,
            stats.commit_ops_sum,
        )
        if store is not None:
            yield CounterMetricFamily(
                "crdt_sync_store_failed_batches",
                "Group commits rolled back.",
                value=stats.failed_batches,
            )
            yield GaugeMetricFamily(
                "crdt_sync_store_queue",
                "Writes waiting for the store writer.",
                value=stats.queued,
            )
        feed = runtime._feed
        logged = feed.publisher.frames_logged if feed else 0
        yield CounterMetricFamily("crdt_sync_frames", "SyncFrames logged.", value=logged)
        yield CounterMetricFamily(
            "crdt_sync_throttled",
            "delta/records requests refused with 429.",
            value=runtime.throttle.refused,
        )
        door = getattr(runtime, "front_door", None)
        yield CounterMetricFamily(
            "crdt_sync_auth_refused",
            "Requests and connections refused by the front door.",
            value=door.refused if door is not None else 0,
        )
        yield CounterMetricFamily(
            "crdt_sync_readonly_updates_refused",
            "Yjs updates dropped: the connection's grant is read-only.",
            value=runtime.readonly_refused,
        )
        limited = CounterMetricFamily(
            "crdt_sync_rate_limited", "Refused by a rate limit.", labels=["kind"]
        )
        for kind, limiter in (("http", runtime.http_limiter), ("ws", runtime.ws_limiter)):
            limited.add_metric([kind], limiter.refused if limiter is not None else 0)
        yield limited
        yield GaugeMetricFamily(
            "crdt_sync_sessions", "Live sessions (revocable).", value=len(runtime.sessions)
        )
        yield from self._supervision(stats)
        yield from self._cluster()
        yield from self._webhooks()

    def _webhooks(self) -> Iterator[Metric]:
        sender = self.runtime.webhooks
        attempts = CounterMetricFamily(
            "crdt_sync_webhook_attempts",
            "Webhook POSTs by outcome: ok (2xx), error (to be retried), parked.",
            labels=["outcome"],
        )
        for outcome in ("ok", "error", "parked"):
            attempts.add_metric([outcome], sender.attempts[outcome] if sender is not None else 0)
        yield attempts
        yield GaugeMetricFamily(
            "crdt_sync_webhook_in_flight",
            "Webhook POSTs waiting for the receiver's answer.",
            value=sender.in_flight if sender is not None else 0,
        )

    def _cluster(self) -> Iterator[Metric]:
        runtime = self.runtime
        info = GaugeMetricFamily(
            "crdt_sync_node_info", "This node (always 1): its id in the cluster.", labels=["node"]
        )
        info.add_metric([runtime.node_id], 1)
        yield info
        buses = runtime.buses
        if buses is None or buses.rooms is None:
            return
        messages = CounterMetricFamily(
            "crdt_sync_bus_messages",
            "Messages on the Redis buses between nodes.",
            labels=["bus", "event"],
        )
        reconnects = CounterMetricFamily(
            "crdt_sync_bus_reconnects", "Reconnections to Redis.", labels=["bus"]
        )
        up = GaugeMetricFamily("crdt_sync_bus_up", "1 while connected to Redis.", labels=["bus"])
        for name, bus in (("rooms", buses.rooms), ("frames", buses.frames)):
            for event in ("published", "dropped", "delivered", "received", "malformed"):
                value = getattr(bus, event, None)
                if isinstance(value, int):
                    messages.add_metric([name, event], value)
            reconnects.add_metric([name], getattr(bus, "reconnects", 0))
            up.add_metric([name], 1 if bus.health() is None else 0)
        yield messages
        yield reconnects
        yield up

    def _histogram(
        self,
        name: str,
        help_text: str,
        bounds: tuple[float, ...],
        counts: tuple[int, ...],
        total: int,
        sum_value: float,
    ) -> Metric:
        """A histogram counted elsewhere (cumulative ``counts`` per bound), exposed as
        ``prometheus_client.Histogram`` would expose it."""
        if len(counts) != len(bounds):  # a store that keeps no histogram
            counts = (0,) * len(bounds)
        buckets = [(floatToGoString(b), c) for b, c in zip(bounds, counts, strict=True)]
        family = HistogramMetricFamily(name, help_text)
        family.add_metric([], [*buckets, ("+Inf", total)], sum_value)
        family.add_sample(f"{name}_created", {}, self.created)
        return family

    def _supervision(self, stats: StoreStats) -> Iterator[Metric]:
        runtime = self.runtime
        supervisor = runtime.supervisor
        failures = CounterMetricFamily(
            "crdt_sync_task_failures", "Supervised tasks that failed.", labels=["task"]
        )
        for task, count in sorted(supervisor.failures.items()):
            failures.add_metric([task], count)
        yield failures
        up = GaugeMetricFamily(
            "crdt_sync_loop_up", "1 while a supervised loop runs.", labels=["task"]
        )
        for name, state in sorted(supervisor.loops.items()):
            up.add_metric([name], 1 if state.running else 0)
        yield up
        conformed = CounterMetricFamily(
            "crdt_sync_values_conformed",
            "Record values projected into the value model.",
            labels=["reason"],
        )
        for reason, count in sorted(CONFORMED.items()):
            conformed.add_metric([reason], count)
        yield conformed
        feed = runtime._feed
        yield CounterMetricFamily(
            "crdt_sync_store_refused_frame_batches",
            "Frame batches the store refused: a value it could not read back.",
            value=stats.refused_batches,
        )
        yield CounterMetricFamily(
            "crdt_sync_frame_listener_failures",
            "Publications of committed frames that raised.",
            value=feed.publisher.failures if feed is not None else 0,
        )
        yield CounterMetricFamily(
            "crdt_sync_frame_send_failures",
            "Frame subscribers closed with 1011: their frames could not be encoded.",
            value=runtime.hub.send_failures,
        )
        keeper = runtime._versions
        versions = CounterMetricFamily(
            "crdt_sync_versions",
            "Document versions taken (auto, on_demand) and deleted by retention (retired).",
            labels=["kind"],
        )
        for kind, attr in (("auto", "auto_taken"), ("on_demand", "taken"), ("retired", "dropped")):
            versions.add_metric([kind], getattr(keeper, attr) if keeper is not None else 0)
        yield versions


class Metrics:
    """The app's registry; :meth:`endpoint` serves it."""

    def __init__(self, runtime: Any) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_NodeCollector(runtime))  # type: ignore[arg-type]
        self.delivery = Histogram(
            "crdt_sync_delivery_latency_seconds",
            "Update received to written to a receiver's socket (sampled).",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.mutations = Counter(
            "crdt_sync_mutations",
            "HTTP mutations by result status.",
            labelnames=["status"],
            registry=self.registry,
        )

    async def endpoint(self, request: Request) -> Response:
        for seconds in TRAFFIC.take_deliveries():
            self.delivery.observe(seconds)
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)
