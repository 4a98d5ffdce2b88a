"""The GPU check's judgements: measured numbers in, one PASS / FAIL / NOT CHECKED line per path out (no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

MIB = 2**20
# CUDA and the CPU sum in another order (F32 weights and an F32 KV cache on both sides, no TF32 in ggml's cuBLAS F32
# path); a bigger difference than 1% of a row's logit spread is a wrong kernel, not rounding.
LOGIT_TOLERANCE = 1e-2
TOP1_MIN = 0.98  # random tiny-model logits have near-ties; more than 2% of positions flipping is not rounding
QUANTIZED_KV_FACTOR = 2.0  # CUDA's FA + q8_0 may move logits at most this many times what the CPU's does
IMATRIX_TOLERANCE = 1e-2  # per tensor: max |Δ Σx²| / max Σx²
VISION_TOLERANCE = 1e-2  # max |Δrow| / max |row|: ONNX Runtime's CUDA EP uses TF32 by default
MEMORY_SLACK = 0.05  # a measured buffer may exceed plan's figure by 5% (+ 16 MiB) before plan under-predicts
DECODE_FLOOR = 0.05  # under 5% of the bandwidth bound, the decoder is not really on the GPU


@dataclass
class Verdict:
    path: str
    status: str  # PASS, FAIL or NOT CHECKED
    detail: str
    numbers: dict = field(default_factory=dict)

    def line(self) -> str:
        return f"{self.status:<11} {self.path}: {self.detail}"


def not_checked(path: str, why: str) -> Verdict:
    return Verdict(path, "NOT CHECKED", why)


def compare_logits(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """Teacher-forced agreement per position: top-1, and max |Δlogit| absolute and relative to the row's spread."""
    if reference.shape != candidate.shape:
        raise ValueError(f"logits of shape {candidate.shape} against {reference.shape}")
    spread = np.maximum(reference.max(axis=1) - reference.min(axis=1), 1e-12)
    diff = np.abs(candidate.astype(np.float64) - reference).max(axis=1)
    return {"positions": int(len(reference)),
            "top1_agreement": float(np.mean(reference.argmax(axis=1) == candidate.argmax(axis=1))),
            "max_abs": float(diff.max()), "max_rel_spread": float((diff / spread).max())}


def _logits_text(stats: dict) -> str:
    return (f"top-1 {stats['top1_agreement']:.1%} of {stats['positions']} positions, max |Δlogit| "
            f"{stats['max_abs']:.3g} = {stats['max_rel_spread']:.2e} of the logit spread")


def _logits_ok(stats: dict) -> bool:
    return stats["top1_agreement"] >= TOP1_MIN and stats["max_rel_spread"] <= LOGIT_TOLERANCE


def _cuda(buffers: dict, kind: str) -> int:
    """Bytes of one buffer kind on CUDA devices (CUDA0, CUDA1 …; CUDA_Host is host memory)."""
    return sum(size for where, size in buffers.get(kind, {}).items() if where.startswith("CUDA") and "Host" not in where)


def logits_verdict(path: str, cpu: np.ndarray, gpu: np.ndarray, llama: dict) -> Verdict:
    stats = compare_logits(cpu, gpu)
    split = llama.get("offloaded")
    all_on_gpu = bool(split) and split[0] == split[1]
    status = "PASS" if _logits_ok(stats) and all_on_gpu else "FAIL"
    where = f"llama.cpp offloaded {split[0]}/{split[1]} layers" if split else "llama.cpp logged no layer split"
    return Verdict(path, status, f"{_logits_text(stats)} (tolerance {LOGIT_TOLERANCE:g}, top-1 ≥ {TOP1_MIN:.0%}) "
                                 f"vs a CPU-only process; {where}", dict(stats, offloaded=split))


def offload_verdict(cpu: np.ndarray, gpu: np.ndarray, llama: dict, asked: int, planned_weights: int) -> Verdict:
    """Part of the layers on the GPU: the split llama.cpp reports, its GPU weights beside plan's, and the logits."""
    stats = compare_logits(cpu, gpu)
    split = llama.get("offloaded")
    on_gpu = _cuda(llama.get("buffers", {}), "model")
    status = "PASS" if _logits_ok(stats) and split and split[0] == asked else "FAIL"
    said = f"llama.cpp offloaded {split[0]}/{split[1]} layers" if split else "llama.cpp logged no layer split"
    return Verdict("partial offload", status,
                   f"asked {asked}: {said}, {on_gpu / MIB:.1f} MiB of weights on CUDA (plan: {planned_weights / MIB:.1f}"
                   f" MiB for {asked} layers); {_logits_text(stats)}",
                   dict(stats, offloaded=split, cuda_weights=on_gpu, planned_weights=planned_weights))


def quantized_kv_verdict(cpu_f32: np.ndarray, cpu_q8: np.ndarray, gpu_f32: np.ndarray, gpu_q8: np.ndarray) -> Verdict:
    """Flash attention + q8_0 KV against no flash attention + f32 KV, on CUDA, judged by what the CPU's does."""
    cpu, gpu = compare_logits(cpu_f32, cpu_q8), compare_logits(gpu_f32, gpu_q8)
    allowed = max(QUANTIZED_KV_FACTOR * cpu["max_rel_spread"], 1e-3)
    ok = gpu["max_rel_spread"] <= allowed and gpu["top1_agreement"] >= cpu["top1_agreement"] - 0.02
    return Verdict("flash attention + q8_0 KV", "PASS" if ok else "FAIL",
                   f"CUDA: {_logits_text(gpu)}; the CPU's own FA + q8_0 moves {cpu['max_rel_spread']:.2e} "
                   f"(top-1 {cpu['top1_agreement']:.1%}); CUDA allowed {allowed:.2e}", {"cuda": gpu, "cpu": cpu})


def compare_imatrix(cpu: dict, gpu: dict) -> Verdict:
    """Σx² per weight from a CPU-only and an all-GPU collection: same weights, same row counts, sums within tolerance."""
    names = {key.split(":", 1)[1] for key in cpu if key.startswith("sum:")}
    other = {key.split(":", 1)[1] for key in gpu if key.startswith("sum:")}
    if names != other:
        missing = sorted(names ^ other)
        return Verdict("imatrix", "FAIL", f"{len(missing)} weights collected on one side only (e.g. {missing[0]})")
    counts = [name for name in names if int(cpu[f"count:{name}"]) != int(gpu[f"count:{name}"])]
    worst, worst_name = 0.0, ""
    for name in sorted(names):
        reference = np.asarray(cpu[f"sum:{name}"], dtype=np.float64)
        rel = float(np.abs(np.asarray(gpu[f"sum:{name}"]) - reference).max() / max(np.abs(reference).max(), 1e-30))
        if rel > worst:
            worst, worst_name = rel, name
    ok = not counts and worst <= IMATRIX_TOLERANCE
    detail = (f"{len(names)} weights, row counts {'equal' if not counts else f'differ for {len(counts)}'}, "
              f"max |ΔΣx²| {worst:.2e} of the largest sum ({worst_name or 'none'}; tolerance {IMATRIX_TOLERANCE:g})")
    return Verdict("imatrix", "PASS" if ok else "FAIL", detail, {"weights": len(names), "max_rel": worst})


def memory_case(info: dict, components: dict[str, int]) -> dict:
    """Measured GPU bytes per plan component: llama.cpp's CUDA buffers, and the rest of the process (CUDA context,
    cuBLAS workspace, pools: plan's runtime_overhead) from nvidia-smi when it lists the process."""
    buffers = info["llama"]["buffers"]
    measured = {"decoder_weights": _cuda(buffers, "model"), "kv_cache": _cuda(buffers, "KV"),
                "decoder_compute_buffer": _cuda(buffers, "compute") + _cuda(buffers, "output")}
    if info.get("process_bytes"):
        measured["runtime_overhead"] = info["process_bytes"] - sum(measured.values())
    rows = {}
    for name, size in measured.items():
        predicted = components.get(name, 0)
        rows[name] = {"measured": size, "predicted": predicted,
                      "ok": size <= predicted * (1 + MEMORY_SLACK) + 16 * MIB}
    taken = (info["free_before"] - info["free_after"]) if info.get("free_before") and info.get("free_after") else None
    return {"components": rows, "llama_cpp_allocated": taken, "process_bytes": info.get("process_bytes")}


def memory_total_case(info: dict, components: dict[str, int]) -> dict:
    """`memory_case` for a run with an MTP context beside the target's: llama.cpp logs both contexts' KV and compute
    buffers under the same names, while plan counts the head's KV and compute buffer in `mtp_head`, so the decoder's
    CUDA buffers are compared as one total."""
    buffers = info["llama"]["buffers"]
    measured = sum(_cuda(buffers, kind) for kind in ("model", "KV", "compute", "output"))
    predicted = sum(components.get(name, 0) for name in ("decoder_weights", "kv_cache", "decoder_compute_buffer", "mtp_head"))
    row = {"measured": measured, "predicted": predicted, "ok": measured <= predicted * (1 + MEMORY_SLACK) + 16 * MIB}
    return {"components": {"target_and_head": row}, "llama_cpp_allocated": None, "process_bytes": None}


def memory_verdict(cases: dict[str, dict]) -> Verdict:
    """One line for every measured case (`memory_case`); FAIL where plan predicts less than a component takes."""
    if not cases:
        return not_checked("memory vs plan", "nothing measured")
    parts, ok = [], True
    for label, case in cases.items():
        rows = case["components"]
        ok &= all(row["ok"] for row in rows.values())
        shown = ", ".join(f"{name.replace('decoder_', '')} {row['measured'] / MIB:.1f}/{row['predicted'] / MIB:.1f}"
                          + ("" if row["ok"] else " UNDER-PREDICTED") for name, row in rows.items())
        if "runtime_overhead" not in rows:
            shown += ", overhead not listed by nvidia-smi"
        parts.append(f"{label}: {shown} MiB measured/plan")
    return Verdict("memory vs plan", "PASS" if ok else "FAIL",
                   "; ".join(parts) + f" (plan without headroom, at the measured settings; slack {MEMORY_SLACK:.0%})",
                   {"cases": cases})


def decode_verdict(info: dict, bandwidth: float | None) -> Verdict:
    """Decode tokens/s against what the device's bandwidth allows: weights on the GPU and the KV cache read per token."""
    speed = info["tokens_per_s"]
    if not bandwidth:
        return not_checked("decode tokens/s", f"{speed:.1f} tokens/s; the bandwidth bound needs torch with CUDA here")
    buffers = info["llama"]["buffers"]
    kv_read = _cuda(buffers, "KV") * info["mean_length"] / max(info.get("n_ctx") or 1, 1)
    per_token = _cuda(buffers, "model") + kv_read
    bound = bandwidth / per_token if per_token else float("inf")
    ratio = speed / bound
    ok = DECODE_FLOOR <= ratio <= 1.0
    return Verdict("decode tokens/s", "PASS" if ok else "FAIL",
                   f"{speed:.1f} tokens/s = {ratio:.1%} of the bandwidth bound {bound:.0f} tokens/s "
                   f"({bandwidth / 1e9:.0f} GB/s copy, {per_token / MIB:.1f} MiB read a token; "
                   f"judged {DECODE_FLOOR:.0%}..100%)",
                   {"tokens_per_s": speed, "bound": bound, "ratio": ratio, "bandwidth": bandwidth})


def vision_verdict(results: dict[str, tuple]) -> Verdict:
    """results: precision → (worker info, CPU rows, CUDA rows or None)."""
    first = next(iter(results.values()))[0]
    if "CUDAExecutionProvider" not in first["available"]:
        return not_checked("vision on CUDA", f"onnxruntime here is a CPU build (providers: {', '.join(first['available'])}); "
                                             "onnxruntime-gpu is not in the kit (too large to carry)")
    parts, ok, numbers = [], True, {}
    for precision, (info, cpu, gpu) in results.items():
        if not info["ran"] or gpu is None:
            ok = False
            parts.append(f"{precision}: did not run on CUDA ({info.get('error') or 'no CUDA provider'})")
            continue
        rel = float(np.abs(gpu - cpu).max() / max(np.abs(cpu).max(), 1e-30))
        on_cuda = bool(info["providers"]) and info["providers"][0] == "CUDAExecutionProvider"
        ok &= rel <= VISION_TOLERANCE and on_cuda
        numbers[precision] = rel
        parts.append(f"{precision}: max |Δrow| {rel:.2e} of the largest (tolerance {VISION_TOLERANCE:g}), "
                     f"ran on {', '.join(info['providers'])}")
    return Verdict("vision on CUDA", "PASS" if ok else "FAIL", "; ".join(parts), numbers)


def draft_timing_text(timing: dict | None) -> str:
    """The bench bundle's draft/verify timings on the GPU and the speed-up at α 0.7 they give (benchmarks.drafting)."""
    if not timing or not timing.get("head"):
        return "no draft timings: the kit's bench skeleton has no MTP head (rebuild the kit)"
    from exaone_edge.benchmarks.drafting import DraftTimings

    measured = {f.name: timing["timings"][f.name] for f in fields(DraftTimings) if f.name in timing["timings"]}
    for name in ("verify_s", "draft_s"):  # JSON made the k keys strings
        measured[name] = {int(k): seconds for k, seconds in measured[name].items()}
    timings = DraftTimings(**measured)
    ks = sorted(timings.verify_s)
    ms = lambda values: "/".join(f"{values[k] * 1e3:.2f}" for k in ks)  # noqa: E731
    here = "/".join(f"{timings.speedup(k, 0.7):.2f}" for k in ks)
    released = "/".join(f"{timings.speedup(k, 0.7, released=True):.2f}" for k in ks)
    return (f"bench bundle (FA, q8_0 KV): one-token step {timings.decode_s * 1e3:.2f} ms, verify k={ks[0]}..{ks[-1]} "
            f"{ms(timings.verify_s)} ms, draft {ms(timings.draft_s)} ms; speed-up at acceptance 0.7, k={ks[0]}..{ks[-1]}: "
            f"{here} here, {released} projected to the 33B")


def mtp_verdict(cpu: np.ndarray, gpu: np.ndarray, llama: dict, timing: dict | None) -> Verdict:
    """The MTP head's draft logits on CUDA against a CPU-only process (teacher-forced drafts on the tiny F32 bundle,
    every layer and the head on the GPU); the bench bundle's timings beside, measured, not judged (the speed-up
    depends on the real head's acceptance rate, which random weights cannot show)."""
    stats = compare_logits(cpu, gpu)
    split = llama.get("offloaded")
    all_on_gpu = bool(split) and split[0] == split[1]
    where = f"llama.cpp offloaded {split[0]}/{split[1]} layers" if split else "llama.cpp logged no layer split"
    return Verdict("MTP drafting on CUDA", "PASS" if _logits_ok(stats) and all_on_gpu else "FAIL",
                   f"head logits at {stats['positions']} draft steps: {_logits_text(stats)} vs a CPU-only process; "
                   f"{where}; {draft_timing_text(timing)}", dict(stats, offloaded=split, timing=timing))


def encode_verdict(info: dict, cpu_encode: str) -> Verdict:
    if not info["ran"]:
        return not_checked("page encode (warm)", f"no CUDA vision encoder here; {cpu_encode}")
    return Verdict("page encode (warm)", "PASS",
                   f"CUDA warm {info['warm_s'] * 1000:.1f} ms (median of the later runs; cold first "
                   f"{info['cold_s'] * 1000:.0f} ms); {cpu_encode}", {"warm_s": info["warm_s"], "cold_s": info["cold_s"]})
