"""`exaone-edge plan`: what fits a GPU (exaone_edge.memory), the recommended setting, and with `--stages` what
each README command costs on the box (plan/stages.py), as one result."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from exaone_edge.budgets import GIB
from exaone_edge.device import describe_gpu_layers
from exaone_edge.memory import HEADROOM, Plan, plan
from exaone_edge.plan.stages import Stage, render_stages, stage_plan, stages_dict


@dataclass(frozen=True)
class PlanReport:
    plan: Plan
    stages: tuple[Stage, ...] = ()
    box: str = ""  # the box the stages are predicted on

    def to_dict(self) -> dict:
        data = json.loads(json.dumps(asdict(self.plan)))
        return {**data, "stages": stages_dict(list(self.stages))} if self.stages else data

    def summary(self) -> str:
        text = render_plan(self.plan)
        return text + "\n\n" + render_stages(list(self.stages), self.box) if self.stages else text


def plan_report(model: Path, *, gpu: str = "rtx4090", context: int | None = None, kv_type: str = "f16",
                level: str | None = None, vision_on_gpu: bool = True, parallel: int = 1, device: str = "auto",
                gpu_layers: int | str | None = None, vision_provider: str = "auto", vision_precision: str = "fp16",
                image_max_tokens: int | None = None, stages: bool = False, cores: int = 8, ram_gib: float = 64,
                disk_gbs: float = 2.0, draft: str | None = None) -> PlanReport:
    result = plan(model, gpu=gpu, context=context, kv_type=kv_type, level=level, vision_on_gpu=vision_on_gpu,
                  parallel=parallel, device=device, gpu_layers=gpu_layers, vision_provider=vision_provider,
                  vision_precision=vision_precision, image_max_tokens=image_max_tokens, draft=draft)
    if not stages:
        return PlanReport(result)
    predicted = stage_plan(model, result, vision_precision=vision_precision, cores=cores, ram_gib=ram_gib,
                           disk_gbs=disk_gbs)
    box = f"{result.gpu}, {cores} cores, {ram_gib:g} GiB RAM, disk {disk_gbs:g} GB/s"
    return PlanReport(result, tuple(predicted), box)


def render_plan(result: Plan) -> str:
    gib = lambda n: f"{n / GIB:6.2f} GiB"  # noqa: E731
    slots = f" × {result.parallel} parallel" if result.parallel > 1 else ""
    lines = [f"{result.gpu} ({gib(result.gpu_bytes).strip()}), {result.level}, context {result.context}{slots}, "
             f"KV {result.kv_type}, vision on {'GPU' if result.vision_on_gpu else 'CPU'}" + ("" if result.weights_measured else " — weights estimated from bits per weight")]
    layers = result.placement["decoder"]["gpu_layers"]
    lines.append("decoder layers on the GPU: " + {-1: "all", 0: "none (decoder on the CPU)"}.get(
        layers, f"n_gpu_layers {layers}: {describe_gpu_layers(layers, *result.decoder_blocks)}"))
    for name, size in result.components.items():
        lines.append(f"  {name:<24}{gib(size)}")
    lines.append(f"  {'headroom (5%)':<24}{gib(int(HEADROOM * result.gpu_bytes))}")
    lines.append(f"  {'total':<24}{gib(result.total_bytes)}  {'fits' if result.fits else 'DOES NOT FIT'}")
    lines.append("host memory, not in the GPU total (llama.cpp keeps the input embedding on the CPU):")
    for name, size in result.host_components.items():
        lines.append(f"  {name:<24}{gib(size)}  ({result.token_embedding_from})")
    lines.append(f"largest context at {result.level}{slots}: {result.max_context or 'none'}")
    lines.append(f"best level for context {result.context}: {result.best_level or 'none fits'}"
                 + (" (at these settings)" if result.recommended else ""))
    if result.recommended:
        best = result.recommended
        pages = f"{best['image_max_tokens']:,}-row pages" if best["image_max_tokens"] else "the source's pages"
        vision = f"vision {best['vision_precision']}, " if result.vision_on_gpu else ""
        lines.append(f"recommended for context {result.context}: {best['level']}, KV {best['kv_type']}, {vision}{pages}: "
                     f"{best['total_bytes'] / GIB:.2f} GiB, fits to {best['max_context']:,} context")
    attention = "full attention fused" if result.vision_attention_fused else "full attention unfused (scores held)"
    lines.append(f"pages up to {result.max_pixels:,} pixels ({result.pixels_from})"
                 + (f", vision {result.vision_precision} weights, {attention}" if result.vision_on_gpu else ""))
    if result.decode_tokens_per_s_ceiling:
        rule = f"{result.parallel} × bandwidth / bytes per step" if result.parallel > 1 else "bandwidth / bytes per token"
        lines.append(f"decode ceiling ({rule}): {result.decode_tokens_per_s_ceiling:.1f} tokens/s")
    return "\n".join(lines)
