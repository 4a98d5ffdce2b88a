"""`exaone-edge run`: one question about images and PDF pages, answered by a bundle, streamed.

Thinking is off unless asked for (`thinking=True`, `run --think`): document questions want short
extractive answers, and EXAONE 4.5's reasoning costs hundreds to thousands of tokens before the answer
(minutes at edge decode speeds, and context that the pages need). With it on, the reasoning comes apart
from the answer in each chunk's `reasoning`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from exaone_edge.engine_settings import EngineSettings
from exaone_edge.errors import InputError
from exaone_edge.files import read_json
from exaone_edge.images import DocumentLimits, load_document
from exaone_edge.runtime.generation import Chunk, GenerationParams, GenerationResult
from exaone_edge.runtime.reasoning import parser_for, split_chunks
from exaone_edge.runtime.structured import Answer, answer_grammar, reasoning_end

THINKING_DEFAULT = False  # see the module docstring


def question_messages(question: str, images: Sequence[Any]) -> list[dict[str, Any]]:
    """One user turn: the pages first, then the question (how the model card prompts documents)."""
    if not question.strip():
        raise InputError("the question is empty")
    parts: list[dict[str, Any]] = [{"type": "image", "image": image} for image in images]
    parts.append({"type": "text", "text": question})
    return [{"role": "user", "content": parts}]


def ask(
    bundle_dir: Path,
    question: str,
    *,
    images: Sequence[Path] = (),
    pdf: Path | None = None,
    pages: str | None = None,
    params: GenerationParams = GenerationParams(),
    limits: DocumentLimits = DocumentLimits(),
    thinking: bool = THINKING_DEFAULT,
    json_schema: Mapping[str, Any] | None = None,
    settings: EngineSettings = EngineSettings(),
) -> Iterator[Chunk]:
    """Load the documents and the bundle, then stream the answer (`chunk.text`) and any reasoning (`chunk.reasoning`).

    `json_schema`: the answer is JSON matching it, guaranteed by a grammar (the reasoning stays free)."""
    from exaone_edge.bundle import load_bundle
    from exaone_edge.runtime.engine import Engine
    from exaone_edge.vision.preprocess import with_image_max_tokens

    if pages is not None and pdf is None:
        raise InputError("--pages needs --pdf")
    bundle = load_bundle(bundle_dir, verify=settings.verify)
    # PDF pages render no larger than the encoder will take them (the Engine bounds images the same way).
    max_pixels = with_image_max_tokens(bundle.image, settings.image_max_tokens).max_pixels
    pictures = []
    for path in images:
        pictures.extend(load_document(Path(path), max_pixels=max_pixels, limits=limits))
    if pdf is not None:
        pictures.extend(load_document(Path(pdf), pages, max_pixels=max_pixels, limits=limits))
    engine = Engine(bundle, settings)
    try:
        params = params.thinking(thinking)
        if json_schema is not None:
            grammar = answer_grammar(Answer(schema=json_schema), param="--json-schema",
                                     think_end=reasoning_end(engine.chat, params.template_kwargs))
            params = replace(params, grammar=grammar)
        chunks = engine.generate(question_messages(question, pictures), params)
        yield from split_chunks(chunks, parser_for(engine.chat, params.template_kwargs))
    finally:
        engine.close()


def read_schema(path: Path) -> dict[str, Any]:
    """A JSON Schema file for `run --json-schema`."""
    schema = read_json(Path(path), "the JSON Schema", error=InputError)
    if not isinstance(schema, dict):
        raise InputError("the JSON Schema must be a JSON object", path=path, fix='Start it with {"type": "object", …}.')
    return schema


def stats_line(result: GenerationResult) -> str:
    usage, timings = result.usage, result.timings
    speed = f"{timings.tokens_per_s:.1f} tokens/s" if timings.tokens_per_s else "n/a tokens/s"
    if timings.drafted:
        speed += f" (drafts accepted {timings.accepted}/{timings.drafted})"
    return (
        f"prompt {usage.prompt_tokens} positions ({usage.image_rows} vision rows, {usage.cached_tokens} cached), "
        f"{usage.vision_runs} vision-encoder run(s) {timings.vision_s:.2f} s; TTFT {timings.ttft_s:.2f} s; "
        f"{usage.completion_tokens} tokens, {speed}; finish: {result.finish_reason}"
    )
