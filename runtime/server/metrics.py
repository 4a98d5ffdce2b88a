"""Prometheus metrics for one app (its own registry, so several apps in one process stay apart)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class ServerMetrics:
    def __init__(self, worker: Any) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("exaone_edge_requests", "HTTP requests by path and status", ["path", "status"], registry=r)
        self.prompt_tokens = Counter("exaone_edge_prompt_tokens", "Prompt positions (vision rows included)", registry=r)
        self.cached_tokens = Counter("exaone_edge_cached_prompt_tokens", "Prompt positions reused from the KV cache", registry=r)
        self.completion_tokens = Counter("exaone_edge_completion_tokens", "Generated tokens", registry=r)
        self.cancelled = Counter("exaone_edge_cancelled_generations", "Generations stopped by a client disconnect", registry=r)
        self.ttft = Histogram(
            "exaone_edge_time_to_first_token_seconds", "Request admitted → first token (queue wait included)",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.duration = Histogram(
            "exaone_edge_generation_seconds", "Request admitted → last token", buckets=LATENCY_BUCKETS, registry=r
        )
        Gauge("exaone_edge_queue_depth", "Admitted requests waiting for the engine", registry=r).set_function(
            lambda: worker.waiting
        )
        Gauge("exaone_edge_requests_running", "Generations running now", registry=r).set_function(lambda: worker.running)
        Gauge("exaone_edge_generations_started", "Generations that reached the engine", registry=r).set_function(
            lambda: worker.started
        )
        Gauge("exaone_edge_vision_encoder_runs", "Vision-encoder runs since start", registry=r).set_function(
            lambda: getattr(worker.engine, "vision_runs", 0)
        )
        if getattr(worker.engine, "drafting", None) is not None:  # --draft
            draft = lambda key: lambda: worker.engine.drafting[key] or 0  # noqa: E731
            for key, name, text in (
                ("drafted", "draft_tokens", "Draft tokens compared with the model's own choice"),
                ("accepted", "draft_accepted_tokens", "Draft tokens the model chose too"),
                ("acceptance_rate", "draft_acceptance_rate", "Accepted ÷ drafted since start"),
                ("tokens_per_step", "draft_tokens_per_step", "Tokens each speculative step produced (all sequences)"),
                ("tokens_per_s", "draft_decode_tokens_per_second", "Tokens per second of the speculative steps"),
            ):
                Gauge(f"exaone_edge_{name}", text, registry=r).set_function(draft(key))
        placement = getattr(worker.engine, "placement", None)
        if placement is not None:  # constant 1 per part; the labels say where it runs
            where = Gauge("exaone_edge_placement", "Where each part runs (1); decoder gpu_layers -1 = all",
                          ["part", "runtime", "device", "gpu_layers"], registry=r)
            for part, info in placement.as_dict().items():
                where.labels(part, info["runtime"], info["device"], str(info.get("gpu_layers", ""))).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
