"""Speed and memory of one bundle, measured in a fresh process so other models don't pollute its RSS.

    python -m exaone_edge.validate.probe BUNDLE PAGE.png "question" → one JSON line on stdout
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from exaone_edge.validate.schema import ProbeFailed, Speed


def measure(bundle: Path, page: Path, question: str, max_tokens: int = 32,
            engine_options: dict[str, Any] | None = None) -> Speed:
    from exaone_edge.images import open_image
    from exaone_edge.runtime.engine import Engine
    from exaone_edge.runtime.generation import GenerationParams

    engine = Engine.load(bundle, n_ctx=4096, **(engine_options or {}))
    messages = [{"role": "user", "content": [{"type": "image", "image": open_image(Path(page))},
                                             {"type": "text", "text": question}]}]
    # min_tokens is not a llama.cpp sampler option: a random model may stop early, so count what came.
    last = None
    for last in engine.generate(messages, GenerationParams(max_tokens=max_tokens).thinking(False)):
        pass
    timings = last.timings
    return Speed(ttft_s=timings.ttft_s, decode_tokens_per_s=timings.tokens_per_s, prompt_tokens=last.usage.prompt_tokens,
                 completion_tokens=last.usage.completion_tokens, peak_rss_bytes=peak_rss_bytes())


def peak_rss_bytes() -> int:
    """VmHWM of this process: unlike ru_maxrss it starts afresh at exec, so the parent's size never leaks in."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


def probe(bundle: Path, page: Path, question: str, engine_options: dict[str, Any] | None = None) -> Speed | ProbeFailed:
    result = subprocess.run(
        [sys.executable, "-m", "exaone_edge.validate.probe", str(bundle), str(page), question,
         json.dumps(engine_options or {})],
        capture_output=True, text=True, timeout=600,
    )
    if result.returncode != 0:
        return ProbeFailed(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "probe failed")
    return Speed(**json.loads(result.stdout.strip().splitlines()[-1]))


if __name__ == "__main__":
    print(json.dumps(asdict(measure(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3],
                                    engine_options=json.loads(sys.argv[4]) if len(sys.argv) > 4 else None))))
