"""What a caller asks of the engine and what comes back: parameters, streamed chunks, usage, timings.

This is the contract between the engine and its callers (`exaone-edge run`, the HTTP server).
Messages are OpenAI-style dicts; an image part is `{"type": "image", "image": PIL.Image.Image}`
(`"image_url"` parts are accepted too when they carry the decoded image under `"image"`).

    engine = Engine.load(bundle_dir, n_ctx=8192, n_gpu_layers=-1)   # exaone_edge.runtime.engine
    for chunk in engine.generate(messages, GenerationParams(max_tokens=256)):
        ...  # chunk.text; the last chunk has finish_reason, usage and timings

The engine streams the raw reply, reasoning markers included; `runtime.reasoning.split_chunks` divides
it into `reasoning` and `text` (what `run`, `serve` and `validate` show). Thinking is the chat
template's `enable_thinking` (in `template_kwargs`); EXAONE 4.5's template thinks when it is unset.

`generate` may be called from several threads: up to `parallel` generations (EngineSettings) decode
together in one batch, more wait for a free slot; callers decide their own concurrency beyond that.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from exaone_edge.errors import InputError
from exaone_edge.runtime.grammar import check_grammar_shape


MAX_TOP_LOGPROBS = 20  # OpenAI's limit


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log-probability under the model (raw logits, before any sampler stage), and the
    `top_logprobs` most likely tokens at that step as (token id, log-probability), most likely first."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int = 512
    temperature: float = 0.0  # 0 → greedy (argmax); > 0 samples
    top_p: float = 1.0
    top_k: int = 0  # 0 → off
    min_p: float = 0.0  # 0 → off
    seed: int | None = None  # None → a fresh random seed per request
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # keep decoding past end-of-turn (benchmarks need a fixed token count)
    # Extra variables for the chat template (e.g. {"enable_thinking": True}), as vLLM's chat_template_kwargs.
    template_kwargs: dict[str, Any] = field(default_factory=dict)
    # A llama.cpp GBNF grammar the reply must match (as llama-server's `grammar`); `<[55]>` names a token id.
    grammar: str | None = None
    # OpenAI function tools declared to the model (EXAONE 4.5's `<|tool_declare|>` turn); calls come back as text
    # (`<tool_call>…</tool_call>`) for runtime.tool_calls to parse.
    tools: tuple[dict[str, Any], ...] | None = None
    top_logprobs: int | None = None  # None: no log-probabilities; n ≥ 0: each token's, with the n most likely

    def __post_init__(self) -> None:
        checks = (
            (self.max_tokens >= 1, "max_tokens must be at least 1"),
            (self.temperature >= 0.0, "temperature must be >= 0"),
            (0.0 < self.top_p <= 1.0, "top_p must be in (0, 1]"),
            (self.top_k >= 0, "top_k must be >= 0"),
            (0.0 <= self.min_p <= 1.0, "min_p must be in [0, 1]"),
            (all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty strings"),
            (self.grammar is None or (isinstance(self.grammar, str) and self.grammar.strip() != ""), "grammar must be a non-empty string"),
            (self.top_logprobs is None or 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS,
             f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}"),
        )
        for ok, message in checks:
            if not ok:
                raise InputError(message)
        if self.grammar is not None:
            check_grammar_shape(self.grammar)  # before llama.cpp's recursive parser can see it

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def thinking(self, default: bool) -> GenerationParams:
        """These parameters with `enable_thinking` set to `default` unless the template kwargs already set it."""
        kwargs = {"enable_thinking": default, **self.template_kwargs}
        if not isinstance(kwargs["enable_thinking"], bool):
            raise InputError("enable_thinking must be true or false")
        return replace(self, template_kwargs=kwargs)


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int  # prompt positions, vision rows included
    completion_tokens: int
    cached_tokens: int  # prompt positions reused from the KV cache (not decoded again)
    image_rows: int  # vision rows in the prompt
    vision_runs: int  # vision-encoder runs this request needed (0 when every image was cached)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Timings:
    vision_s: float  # running the vision encoder (0 on cache hits)
    prefill_s: float  # decoding the prompt positions that were not cached
    ttft_s: float  # request start → first generated token
    decode_s: float  # first token → last token
    total_s: float
    tokens_per_s: float | None  # generation speed after the first token (None with fewer than two)
    drafted: int = 0  # --draft: draft tokens compared with the model's own choice
    accepted: int = 0  # of them, accepted (the acceptance rate is accepted / drafted)


@dataclass(frozen=True)
class Chunk:
    text: str  # the answer (with reasoning split off), or the raw reply straight from the engine
    finish_reason: str | None = None  # None while streaming; "stop" or "length" on the last chunk
    usage: Usage | None = None  # set on the last chunk
    timings: Timings | None = None  # set on the last chunk
    token_ids: tuple[int, ...] = ()  # the whole completion's token ids, on the last chunk
    reasoning: str = ""  # reasoning text (set once runtime.reasoning has split the stream)
    # With top_logprobs: the tokens consumed since the previous chunk (text held back waits with its tokens).
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class GenerationResult:
    text: str
    finish_reason: str
    usage: Usage
    timings: Timings
    token_ids: tuple[int, ...] = ()
    reasoning: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "reasoning": self.reasoning, "finish_reason": self.finish_reason,
                "usage": asdict(self.usage), "timings": asdict(self.timings)}

    def summary(self) -> str:
        return self.text


def collect(chunks) -> GenerationResult:
    """Fold a stream of chunks into one result."""
    parts: list[str] = []
    thoughts: list[str] = []
    last: Chunk | None = None
    for chunk in chunks:
        parts.append(chunk.text)
        thoughts.append(chunk.reasoning)
        last = chunk
    if last is None or last.finish_reason is None or last.usage is None or last.timings is None:
        raise RuntimeError("generation stream ended without a final chunk")
    return GenerationResult(
        "".join(parts), last.finish_reason, last.usage, last.timings, last.token_ids, reasoning="".join(thoughts)
    )
