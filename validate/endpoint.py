"""Any OpenAI-compatible endpoint as a validation candidate: vLLM serving our GPTQ, llama-server with LG's GGUF, our
own `exaone-edge serve`. The same questions and pages (PNG data URLs) go over /v1/chat/completions, greedy, streamed,
with `logprobs`/`top_logprobs` asked for, and the answers are scored like a bundle's.

A chat endpoint cannot be teacher-forced, so its top-1 agreement is taken along its own greedy answer: each token
whose text continues the reference's greedy answer agrees; the first that departs ends the comparison for that
question (its `top_logprobs` tell whether the reference's continuation was the endpoint's runner-up). Agreement n/n
means the endpoint reproduced the reference's answers. A server that returns no `top_logprobs` gets none (the
answers are still scored). Time to first token and decode tokens/s are measured on the same requests, here.
"""

from __future__ import annotations

import base64
import codecs
import io
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from exaone_edge.errors import InputError
from exaone_edge.reference.inputs import Question
from exaone_edge.validate.schema import EndpointAgreement, Speed

TOP_LOGPROBS = 5
TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Endpoint:
    url: str  # the server's base URL, with or without /v1
    model: str | None = None  # None: the server's only model
    api_key: str | None = None

    @property
    def base(self) -> str:
        url = self.url.rstrip("/")
        return url if url.endswith("/v1") else url + "/v1"


def endpoints_from(urls: list[str], models: list[str], api_key_file: Path | None = None) -> list[Endpoint]:
    """--endpoint URL (repeatable) paired in order with --endpoint-model NAME (one per endpoint, or none)."""
    if models and len(models) != len(urls):
        raise InputError(f"{len(urls)} --endpoint but {len(models)} --endpoint-model",
                         fix="Give one --endpoint-model per --endpoint, in the same order (or none: each server's only model).")
    key = None
    if api_key_file is not None:
        try:
            key = Path(api_key_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise InputError(f"cannot read the API key file ({exc.strerror})", path=api_key_file) from None
    for url in urls:
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
            raise InputError(f"--endpoint {url!r} is not an http(s) URL", fix="Pass e.g. http://127.0.0.1:8000/v1.")
    return [Endpoint(url, models[i] if models else None, key) for i, url in enumerate(urls)]


@dataclass
class Reply:
    content: str
    reasoning: str
    tokens: list[dict[str, Any]]  # logprobs.content entries: token, bytes, logprob, top_logprobs
    finish_reason: str | None
    ttft_s: float | None
    decode_s: float
    completion_tokens: int
    prompt_tokens: int | None


def data_url(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


class EndpointCandidate:
    kind = "endpoint"

    def __init__(self, endpoint: Endpoint, thinking: bool = False) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}
        self.client = httpx.Client(base_url=endpoint.base, headers=headers, timeout=TIMEOUT_S)
        self.thinking = thinking
        self.path = endpoint.base
        self.model = endpoint.model or self._only_model()
        self.name = f"{self.model} @ {urlsplit(endpoint.base).netloc}"
        self.bits = None
        self.bytes = None

    def _get_models(self) -> list[str]:
        import httpx

        try:
            response = self.client.get("/models")
            response.raise_for_status()
            return [model["id"] for model in response.json()["data"]]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"endpoint {self.path} did not list its models ({exc})",
                             fix="Check the URL and that the server is running (GET /v1/models).") from None

    def _only_model(self) -> str:
        models = self._get_models()
        if len(models) != 1:
            raise InputError(f"endpoint {self.path} serves {len(models)} models ({', '.join(models)})",
                             fix="Name one with --endpoint-model.")
        return models[0]

    def check(self) -> None:
        """Before the reference work: the server answers and serves the model."""
        models = self._get_models()
        if self.model not in models:
            raise InputError(f"endpoint {self.path} does not serve '{self.model}' (it serves {', '.join(models)})",
                             fix="Pass one of those as --endpoint-model.")

    def ask(self, question: Question, max_tokens: int) -> Reply:
        body = {
            "model": self.model, "stream": True, "stream_options": {"include_usage": True}, "temperature": 0,
            "max_tokens": max_tokens, "logprobs": True, "top_logprobs": TOP_LOGPROBS,
            "chat_template_kwargs": {"enable_thinking": self.thinking},
            "messages": question.user_message({"type": "image_url", "image_url": {"url": data_url(question.image)}}),
        }
        return self._stream(body)

    def _stream(self, body: dict[str, Any]) -> Reply:
        import httpx

        reply = Reply("", "", [], None, None, 0.0, 0, None)
        started = time.perf_counter()
        first = last = None
        try:
            with self.client.stream("POST", "/chat/completions", json=body) as response:
                if response.status_code != 200:
                    response.read()
                    raise InputError(f"endpoint {self.path} answered {response.status_code}: {response.text[:300]}",
                                     fix="Check the model name and that the server takes images and logprobs.")
                for line in response.iter_lines():
                    if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                        continue
                    chunk = json.loads(line[5:])
                    if chunk.get("usage"):
                        reply.completion_tokens = chunk["usage"].get("completion_tokens", 0)
                        reply.prompt_tokens = chunk["usage"].get("prompt_tokens")
                    for choice in chunk.get("choices") or ():
                        delta = choice.get("delta") or {}
                        text = delta.get("content") or ""
                        thought = delta.get("reasoning_content") or delta.get("reasoning") or ""
                        if text or thought:
                            now = time.perf_counter()
                            first = first if first is not None else now
                            last = now
                        reply.content += text
                        reply.reasoning += thought
                        reply.tokens += (choice.get("logprobs") or {}).get("content") or []
                        reply.finish_reason = choice.get("finish_reason") or reply.finish_reason
        except httpx.HTTPError as exc:
            raise InputError(f"endpoint {self.path} failed mid-answer ({exc})", fix="Check the server's log.") from None
        reply.completion_tokens = reply.completion_tokens or len(reply.tokens)
        reply.ttft_s = None if first is None else first - started
        reply.decode_s = 0.0 if first is None else last - first
        return reply

    def raw_answer(self, reply: Reply) -> str:
        """The reply as validate scores a bundle's: reasoning, `</think>`, answer (a server that splits them)."""
        if self.thinking and reply.reasoning:
            return f"{reply.reasoning}</think>{reply.content}"
        return reply.content

    def close(self) -> None:
        self.client.close()


def _piece(entry: dict[str, Any]) -> bytes:
    return bytes(entry["bytes"]) if entry.get("bytes") is not None else entry["token"].encode()


def greedy_path_agreement(reference: str, tokens: list[dict[str, Any]],
                          finish_reason: str | None) -> tuple[int, int, bool]:
    """(tokens agreed, positions compared, the departing position's runner-up was the reference's) for one answer.

    Compared as text the way the reference was decoded (tokenizers' lossy UTF-8: one U+FFFD per invalid run, which a
    random model produces often): the token bytes go through an incremental decoder that holds back an incomplete
    character until its last byte comes."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    text = ""
    for index, entry in enumerate(tokens):
        state = decoder.getstate()
        after = text + decoder.decode(_piece(entry))
        if reference.startswith(after.lstrip()):
            text = after
            if len(after.lstrip()) >= len(reference):
                return index + 1, index + 1, False  # the whole reference reproduced: what follows is not comparable
            continue
        return index, index + 1, _runner_up(reference, text, state, entry)
    if finish_reason == "stop" and len(text.lstrip()) < len(reference):
        return len(tokens), len(tokens) + 1, False  # it ended where the reference went on
    return len(tokens), len(tokens), False


def _runner_up(reference: str, text: str, state: tuple[bytes, int], entry: dict[str, Any]) -> bool:
    """Whether the endpoint's second choice at a departure continues the reference."""
    for alternative in (entry.get("top_logprobs") or [])[1:2]:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        decoder.setstate(state)
        after = (text + decoder.decode(_piece(alternative))).lstrip()
        if len(after) > len(text.lstrip()) and reference.startswith(after):
            return True
    return False


def endpoint_agreement(references: list[str], replies: list[Reply]) -> EndpointAgreement | None:
    """Top-1 along each greedy answer (module docstring); None when the server returned no top_logprobs."""
    if not any(reply.tokens for reply in replies):
        return None
    agreed = compared = runner_up = 0
    for reference, reply in zip(references, replies):
        a, c, r = greedy_path_agreement(reference, reply.tokens, reply.finish_reason)
        agreed, compared, runner_up = agreed + a, compared + c, runner_up + r
    return EndpointAgreement(top1_agreement=agreed / compared if compared else None, positions=compared,
                             departures=compared - agreed, runner_up_departures=runner_up)


def endpoint_speed(replies: list[Reply]) -> Speed | None:
    """Median time to first token; decode rate over every answer (tokens after the first / time after the first)."""
    timed = [r for r in replies if r.ttft_s is not None]
    if not timed:
        return None
    decode_s = sum(r.decode_s for r in timed)
    after_first = sum(max(r.completion_tokens - 1, 0) for r in timed)
    prompts = [r.prompt_tokens for r in timed if r.prompt_tokens is not None]
    return Speed(ttft_s=statistics.median(r.ttft_s for r in timed),
                 decode_tokens_per_s=after_first / decode_s if decode_s > 0 and after_first else None,
                 prompt_tokens=int(statistics.median(prompts)) if prompts else 0,
                 completion_tokens=sum(r.completion_tokens for r in timed), peak_rss_bytes=None)
