"""The regression gate: compare a report with a baseline, artifact by artifact, per bit width."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from exaone_edge.validate.schema import ArtifactResult


@dataclass(frozen=True)
class Thresholds:
    kl_mean_increase: float  # absolute nats
    top1_drop: float  # absolute fraction
    anls_drop: float  # absolute ANLS
    vision_cosine_drop: float


# Looser as bits drop: a 4-bit level moves more from run to run than an 8-bit one.
DEFAULT_THRESHOLDS: dict[int, Thresholds] = {
    16: Thresholds(kl_mean_increase=0.005, top1_drop=0.01, anls_drop=0.02, vision_cosine_drop=0.0005),
    8: Thresholds(kl_mean_increase=0.02, top1_drop=0.03, anls_drop=0.03, vision_cosine_drop=0.005),
    4: Thresholds(kl_mean_increase=0.10, top1_drop=0.06, anls_drop=0.05, vision_cosine_drop=0.02),
}


@dataclass(frozen=True)
class Regression:
    artifact: str
    metric: str
    baseline: float
    current: float
    allowed: float

    def __str__(self) -> str:
        return (f"{self.artifact}: {self.metric} {self.baseline:.4g} → {self.current:.4g} "
                f"(allowed change {self.allowed:.4g})")


def thresholds_for(bits: int | None, overrides: dict[str, float] | None = None) -> Thresholds:
    base = DEFAULT_THRESHOLDS[min(DEFAULT_THRESHOLDS, key=lambda b: abs(b - (bits or 16)))]
    return replace(base, **(overrides or {}))


@dataclass(frozen=True)
class Gated:
    """One metric the gate watches: how to read it from a result, and which allowance bounds its change."""

    name: str  # as the report and the regression lines name it
    read: Callable[[ArtifactResult], float | None]
    allowed: Callable[[Thresholds], float]
    higher_is_worse: bool = False


GATED = (
    Gated("decoder.kl_mean", lambda a: a.decoder and a.decoder.kl_mean, lambda t: t.kl_mean_increase, True),
    Gated("decoder.top1_agreement", lambda a: a.decoder and a.decoder.top1_agreement, lambda t: t.top1_drop),
    Gated("task.anls", lambda a: a.task and a.task.anls, lambda t: t.anls_drop),
    Gated("vision.cosine_min", lambda a: a.vision and a.vision.cosine_min, lambda t: t.vision_cosine_drop),
    Gated("endpoint.top1_agreement", lambda a: a.endpoint and a.endpoint.top1_agreement, lambda t: t.top1_drop),
)


def compare(current: Sequence[ArtifactResult], baseline: Sequence[ArtifactResult],
            overrides: dict[str, float] | None = None) -> list[Regression]:
    """Every metric that worsened beyond its threshold; artifacts missing from the baseline are new, not failures."""
    previous = {artifact.name: artifact for artifact in baseline}
    found: list[Regression] = []
    for artifact in current:
        old = previous.get(artifact.name)
        if old is None:
            continue
        limits = thresholds_for(artifact.bits, overrides)
        for metric in GATED:
            before, after = metric.read(old), metric.read(artifact)
            if before is None or after is None:
                continue
            allowed = metric.allowed(limits)
            if (after - before) * (1 if metric.higher_is_worse else -1) > allowed:
                found.append(Regression(artifact.name, metric.name, before, after, allowed))
    return found
