"""The engine: a bundle's vision encoder (ONNX Runtime) and decoder (llama.cpp) answering conversations.

    engine = Engine.load("bundle/", n_ctx=8192)
    for chunk in engine.generate(messages, GenerationParams(max_tokens=256)):
        print(chunk.text, end="")

Images are encoded once and their rows cached (content hash + preprocessing); the decoded prefix of
the previous request stays in the KV cache, so a follow-up on the same page only decodes what is new.
`parallel` generations run at once, each in its own sequence (slot) of the llama.cpp context, their
decode steps batched together (runtime/scheduler.py); `generate` may be called from several threads,
and more callers than slots wait for one. Closing the iterator early stops generation and frees its slot.
"""

from __future__ import annotations

import contextlib
import secrets
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from exaone_edge.bundle import Bundle, load_bundle
from exaone_edge.device import choose_placement
from exaone_edge.engine_settings import EngineSettings
from exaone_edge.errors import ArtifactError, ImageRejected, InputError, MissingDependency, PromptTooLong
from exaone_edge.images import to_rgb
from exaone_edge.llama_context import EmbeddingSegment, LlamaContext, LlamaOptions, Segment, TextSegment
from exaone_edge.runtime.generation import Chunk, GenerationParams, Timings, Usage
from exaone_edge.runtime.prompt import ChatFormat, Prompt, message_images
from exaone_edge.runtime.drafting import MtpDrafter, Speculation
from exaone_edge.runtime.scheduler import DecoderDied, Request, Scheduler
from exaone_edge.runtime.textstream import Detokenizer, StopScanner
from exaone_edge.runtime.vision_cache import VisionCache, image_key
from exaone_edge.spec import ImageSpec
from exaone_edge.vision.preprocess import with_image_max_tokens

DEFAULT_CONTEXT = 8192


class _Cancelled(Exception):
    """The caller's cancel event was set while the prompt was being prepared."""


@dataclass(frozen=True)
class PreparedPrompt:
    prompt: Prompt
    segments: list[Segment]
    image_rows: int
    vision_runs: int
    vision_s: float


class ImageEncoder(Protocol):
    def encode(self, image: Image.Image) -> np.ndarray: ...  # [rows, decoder width] float32

    def rows_for(self, image_size: tuple[int, int]) -> int: ...  # rows `encode` will return, (width, height)


class Engine:
    def __init__(self, bundle: Bundle, options: EngineSettings, vision: ImageEncoder | None = None) -> None:
        """`vision` defaults to the bundle's ONNX encoder (`exaone_edge.vision.VisionEncoder`), which resizes pages
        to `self.image`; an encoder passed in does its own preprocessing."""
        self.bundle = bundle
        # --ctx auto / --gpu-layers auto, fitted before anything is loaded (None when neither was asked)
        self.fit = None
        if "auto" in (options.n_ctx, options.n_gpu_layers):
            from exaone_edge.fit import fit_engine

            self.fit = fit_engine(bundle.path, ctx=options.n_ctx, gpu_layers=options.n_gpu_layers, device=options.device,
                                  vision_provider=options.vision_provider, has_vision=vision is None and bundle.has_vision,
                                  image_max_tokens=options.image_max_tokens, kv_type=options.kv_type,
                                  parallel=options.parallel, default_ctx=self._default_ctx(bundle), draft=options.draft)
            options = replace(options, n_ctx=self.fit.n_ctx, n_gpu_layers=self.fit.gpu_layers)
            sys.stderr.write(f"fit: {self.fit.describe()}\n")
        self.options = options
        # Every image and rendered PDF page is bounded by this (a bad image_max_tokens fails before anything loads).
        self.image: ImageSpec = with_image_max_tokens(bundle.image, options.image_max_tokens)
        # Rows depend on the page budget as well as on the encoder and its preprocessing config.
        self._preprocessing = f"{bundle.preprocessing_id}:max_pixels={self.image.max_pixels}"
        self.chat = ChatFormat.from_files(bundle.path, bundle.spec.image_token_id)
        placement = choose_placement(options.device, options.n_gpu_layers, options.vision_provider,
                                     has_vision=vision is None and bundle.has_vision)
        self.placement = placement if vision is None else replace(placement, vision="caller")
        sys.stderr.write(f"placement: {self.placement.describe()}\n")  # one unwrapped line, for people and for grep
        if vision is None and bundle.has_vision:
            try:
                from exaone_edge.vision import VisionEncoder
            except ImportError as exc:
                raise MissingDependency(
                    f"the bundle has a vision encoder but exaone_edge.vision cannot be imported ({exc})",
                    fix="Install exaone-edge with the runtime extra: pip install 'exaone-edge[runtime]'.",
                ) from None
            vision = VisionEncoder(bundle.vision_dir, providers=list(self.placement.providers),
                                   image_max_tokens=options.image_max_tokens)
        self.vision = vision
        n_ctx = options.n_ctx or self._default_ctx(bundle)
        self.llama = LlamaContext(
            bundle.decoder_path,
            LlamaOptions(
                n_ctx=n_ctx,
                n_gpu_layers=self.placement.gpu_layers,
                n_threads=options.n_threads,
                n_batch=options.n_batch,
                flash_attn=options.flash_attn,
                kv_type=options.kv_type,
                swa_full=options.swa_full,
                n_seq=options.parallel,
                verbose=options.verbose,
                mtp=options.draft == "mtp",
                image_token=bundle.spec.image_token_id,
            ),
        )
        if self.llama.n_embd != bundle.spec.decoder.hidden_size:
            raise ArtifactError(
                f"decoder.gguf has width {self.llama.n_embd}, config.json says {bundle.spec.decoder.hidden_size}",
                path=bundle.decoder_path,
                fix="Re-create the bundle.",
            )
        self.cache = VisionCache(options.vision_cache_entries, options.vision_cache_bytes)
        self.vision_runs = 0  # vision-encoder runs since load
        self.requests = 0
        self._stop_ids = bundle.eos_token_ids
        self._lock = threading.Lock()  # the vision encoder, its cache and the counters
        speculation = None
        if options.draft == "mtp":
            speculation = Speculation(self.llama, MtpDrafter(self.llama), options.draft_max, "mtp")
        self.scheduler = Scheduler(self.llama, speculation)

    @staticmethod
    def _default_ctx(bundle: Bundle) -> int:
        return min(bundle.spec.decoder.max_position_embeddings, DEFAULT_CONTEXT)

    @classmethod
    def load(cls, bundle_dir: Path | str, settings: EngineSettings | None = None, **values: Any) -> Engine:
        """`settings`, or EngineSettings(**values) (exaone_edge/engine_settings.py: n_ctx, n_gpu_layers, n_threads, …)."""
        if settings is None:
            known = {f.name for f in fields(EngineSettings)}
            unknown = sorted(set(values) - known)
            if unknown:
                raise InputError(f"unknown engine setting(s): {', '.join(unknown)}", fix=f"Known: {', '.join(sorted(known))}.")
            settings = EngineSettings(**values)
        return cls(load_bundle(bundle_dir, verify=settings.verify), settings)

    @property
    def model_id(self) -> str:
        return self.bundle.name

    @property
    def n_ctx(self) -> int:
        """Positions one request may use (prompt and answer); every slot holds this many."""
        return self.llama.n_ctx

    @property
    def parallel(self) -> int:
        return self.llama.n_seq

    @property
    def drafting(self) -> dict[str, Any] | None:
        """--draft: the drafter, its k and what it achieved since load (acceptance, tokens per step, time)."""
        speculation = self.scheduler.speculation
        if speculation is None:
            return None
        return {"method": speculation.method, "draft_max": speculation.k, **speculation.stats.as_dict()}

    @property
    def image_max_tokens(self) -> int:
        """The most decoder rows one image or page becomes here (the effective --image-max-tokens)."""
        return self.image.max_pixels // (self.image.patch_size * self.image.merge_size) ** 2

    def generate(
        self,
        messages: Sequence[Mapping[str, Any]],
        params: GenerationParams = GenerationParams(),
        *,
        cancel: threading.Event | None = None,
    ) -> Iterator[Chunk]:
        """Stream the assistant's reply; the last chunk carries finish_reason, usage and timings.

        Setting `cancel` (from any thread) stops the request wherever it is: between images of the
        vision encoder, waiting for a slot, between prefill batches, or decoding; the stream then ends
        without a final chunk.
        """
        if not isinstance(params, GenerationParams):
            raise InputError("params must be a GenerationParams")
        return self._generate(list(messages), params, cancel)

    @property
    def failure(self) -> DecoderDied | None:
        """Set when the decode thread has died: this engine cannot generate any more."""
        return self.scheduler.failure

    def wait_failure(self, timeout: float | None = None) -> DecoderDied | None:
        """Block until the decode thread dies (or `timeout` passes); returns the failure, if any."""
        self.scheduler.died.wait(timeout)
        return self.scheduler.failure

    def check(self, messages: Sequence[Mapping[str, Any]], params: GenerationParams = GenerationParams()) -> int:
        """Validate a request without running anything heavy; returns its prompt length in positions.

        Raises the errors `generate` would raise for the messages (InputError, ImageRejected,
        PromptTooLong), so a server can answer 4xx before it starts streaming.
        """
        images = self._images(messages)
        rows = [self.vision.rows_for(image.size) for image in images]
        prompt = self.chat.encode(messages, rows, template_kwargs=params.template_kwargs, tools=params.tools)
        if params.grammar is not None:
            self.llama.check_grammar(params.grammar)
        if len(prompt.ids) >= self.n_ctx:
            raise PromptTooLong(
                f"the prompt takes {len(prompt.ids)} positions ({sum(rows)} of them vision rows), "
                f"the context holds {self.n_ctx}",
                fix="Ask about fewer or smaller pages or a shorter conversation, or use a larger context.",
            )
        return len(prompt.ids)

    def next_token_logits(
        self, messages: Sequence[Mapping[str, Any]], template_kwargs: Mapping[str, Any] | None = None
    ) -> np.ndarray:
        """Logits for the first token of the reply (what parity checks compare against transformers)."""
        with self._lock:
            prepared = self._prepare(list(messages), template_kwargs or {})
        request = self.scheduler.submit(Request(prepared.segments, logits_only=True))
        try:
            for _ in self.scheduler.tokens(request):
                pass
        finally:
            self.scheduler.cancel(request)
        return request.logits

    def encode_prompt(
        self, messages: Sequence[Mapping[str, Any]], template_kwargs: Mapping[str, Any] | None = None
    ) -> Prompt:
        """The token ids and image positions the engine would decode (vision rows cached on the way)."""
        with self._lock:
            return self._prepare(list(messages), template_kwargs or {}).prompt

    def token_bytes(self, token: int) -> bytes:
        """The bytes a token stands for, control tokens' text included (what OpenAI's logprobs report)."""
        return self.llama.model.piece(token, special=True)

    def close(self) -> None:
        self.scheduler.close()

    # -- internals -----------------------------------------------------------------------------

    def _generate(
        self, messages: list[Mapping[str, Any]], params: GenerationParams, cancel: threading.Event | None = None
    ) -> Iterator[Chunk]:
        start = time.perf_counter()
        with self._lock:
            self.requests += 1
        # The lock guards the vision encoder and its cache: a text-only prompt never waits for another's images.
        with self._lock if message_images(messages) else contextlib.nullcontext():
            try:
                prepared = self._prepare(messages, params.template_kwargs, cancel, tools=params.tools)
            except _Cancelled:
                return
        seed = params.seed if params.seed is not None else secrets.randbits(32)
        request = Request(
            prepared.segments,
            sampling=dict(temperature=params.temperature, top_k=params.top_k, top_p=params.top_p, min_p=params.min_p, seed=seed,
                          grammar=params.grammar),
            max_tokens=params.max_tokens,
            ignore_eos=params.ignore_eos,
            stop_ids=frozenset(self._stop_ids),
            top_logprobs=params.top_logprobs,
        )
        self.scheduler.submit(request)
        detokenizer = Detokenizer(self.chat.decode)
        scanner = StopScanner(params.stop)
        generated: list[int] = []
        first = None
        reported = 0  # tokens whose log-probabilities went out with a chunk
        try:
            for token in self.scheduler.tokens(request, cancel):
                first = first or time.perf_counter()
                generated.append(token)
                text = scanner.feed(detokenizer.add(token))
                if text:  # with the log-probabilities of every token consumed since the last chunk
                    yield Chunk(text, logprobs=tuple(request.logprobs[reported:len(generated)]))
                    reported = len(generated)
                if scanner.stopped:
                    break
        finally:
            self.scheduler.cancel(request)  # a stop string, or the caller closed the stream: free the slot now
        if request.stats is None or (cancel is not None and cancel.is_set() and request.finish_reason is None):
            return  # cancelled before or during its prefill, or while decoding: nobody waits for a summary
        finish = "stop" if scanner.stopped else request.finish_reason
        tail = scanner.feed(detokenizer.flush()) + scanner.finish()
        end = time.perf_counter()
        first = first or end
        completion = len(generated)
        usage = Usage(
            prompt_tokens=request.stats.positions,
            completion_tokens=completion,
            cached_tokens=request.stats.reused,
            image_rows=prepared.image_rows,
            vision_runs=prepared.vision_runs,
        )
        timings = Timings(
            vision_s=prepared.vision_s,
            prefill_s=request.prefill_s,
            ttft_s=first - start,  # waiting for a slot included
            decode_s=end - first,
            total_s=end - start,
            tokens_per_s=(completion - 1) / (end - first) if completion > 1 and end > first else None,
            drafted=request.drafted,
            accepted=request.accepted,
        )
        yield Chunk(tail, finish_reason=finish, usage=usage, timings=timings, token_ids=tuple(generated),
                    logprobs=tuple(request.logprobs[reported:len(generated)]))

    def _images(self, messages: Sequence[Mapping[str, Any]]) -> list[Image.Image]:
        images = message_images(messages)
        for index, image in enumerate(images):
            if not isinstance(image, Image.Image):
                raise ImageRejected(f"image {index + 1} is a {type(image).__name__}, not a decoded PIL image")
        if images and self.vision is None:
            raise InputError(
                "this bundle has no vision encoder, so it cannot read images",
                fix="Re-create the bundle with `exaone-edge quantize ... --vision EXPORT_DIR`.",
            )
        return images

    def _prepare(
        self, messages: list[Mapping[str, Any]], template_kwargs: Mapping[str, Any], cancel: threading.Event | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> PreparedPrompt:
        images = self._images(messages)
        started = time.perf_counter()
        rows_per_image, keys, runs = [], [], 0
        for image in images:
            if cancel is not None and cancel.is_set():
                raise _Cancelled()
            image = to_rgb(image)
            key = image_key(image, self._preprocessing)
            rows = self.cache.get(key)
            if rows is None:
                rows = np.asarray(self.vision.encode(image), dtype=np.float32)
                runs += 1
                self.vision_runs += 1
                self.cache.put(key, rows)
            rows_per_image.append(rows)
            keys.append(key)
        vision_s = time.perf_counter() - started
        prompt = self.chat.encode(messages, [len(rows) for rows in rows_per_image], template_kwargs=template_kwargs,
                                  tools=tools)
        segments: list[Segment] = []
        position = 0
        for slot in prompt.images:
            if slot.start > position:
                segments.append(TextSegment(prompt.ids[position : slot.start]))
            segments.append(EmbeddingSegment(keys[slot.index], rows_per_image[slot.index]))
            position = slot.start + slot.rows
        if position < len(prompt.ids):
            segments.append(TextSegment(prompt.ids[position:]))
        return PreparedPrompt(
            prompt=prompt,
            segments=segments,
            image_rows=sum(len(rows) for rows in rows_per_image),
            vision_runs=runs,
            vision_s=vision_s,
        )
