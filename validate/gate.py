"""The regression gate: compare a report with a baseline, artifact by artifact, per bit width."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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
    return Thresholds(**{**base.__dict__, **(overrides or {})})


def _get(section: dict[str, Any] | None, key: str) -> float | None:
    value = (section or {}).get(key)
    return float(value) if isinstance(value, (int, float)) else None


def compare(report: dict[str, Any], baseline: dict[str, Any],
            overrides: dict[str, float] | None = None) -> list[Regression]:
    """Every metric that worsened beyond its threshold; artifacts missing from the baseline are new, not failures."""
    previous = {artifact["name"]: artifact for artifact in baseline.get("artifacts", [])}
    found: list[Regression] = []
    for artifact in report.get("artifacts", []):
        old = previous.get(artifact["name"])
        if old is None:
            continue
        limits = thresholds_for(artifact.get("bits"), overrides)
        checks = (
            ("decoder", "kl_mean", +1, limits.kl_mean_increase),
            ("decoder", "top1_agreement", -1, limits.top1_drop),
            ("task", "anls", -1, limits.anls_drop),
            ("vision", "cosine_min", -1, limits.vision_cosine_drop),
        )
        for section, key, worse, allowed in checks:
            before, after = _get(old.get(section), key), _get(artifact.get(section), key)
            if before is None or after is None:
                continue
            if (after - before) * worse > allowed:
                found.append(Regression(artifact["name"], f"{section}.{key}", before, after, allowed))
    return found
