"""OpenAI chat-completions request and response shapes (the subset this server implements), as typed models.

Unknown request fields are ignored, as OpenAI-compatible servers do; known fields are type-checked.
Extensions: `top_k`, `min_p`, `chat_template_kwargs` (as vLLM; `enable_thinking` turns reasoning on or off),
`grammar` (as llama-server), and `pages` on image/file parts (PDFs). With thinking on, replies carry
`reasoning_content` beside `content`, in whole messages and as their own stream deltas (as vLLM).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(_Request):
    type: Literal["text"]
    text: str


class ImageUrl(_Request):
    url: str  # data:image/...;base64,…, data:application/pdf;base64,…, file:///path, /path, http(s)://…
    detail: str | None = Field(None, max_length=16)
    pages: str | None = Field(None, max_length=256)  # PDFs: "1-3,5" (1-based); default: every page, up to the limit


class ImageUrlPart(_Request):
    type: Literal["image_url"]
    image_url: ImageUrl


class FileRef(_Request):
    file_data: str | None = None  # a data URL (application/pdf or an image)
    file_id: str | None = Field(None, max_length=256)  # not supported: there is no file store
    filename: str | None = Field(None, max_length=1024)
    pages: str | None = Field(None, max_length=256)


class FilePart(_Request):
    type: Literal["file"]
    file: FileRef


ContentPart = Annotated[TextPart | ImageUrlPart | FilePart, Field(discriminator="type")]


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None


class StreamOptions(_Request):
    include_usage: bool = False


class ChatCompletionRequest(_Request):
    model: str = Field(max_length=256)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)  # default 0: greedy, what document QA wants
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0, le=2**31 - 1)  # llama.cpp takes an int32
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)
    stop: str | list[str] | None = None
    ignore_eos: bool = False  # vLLM's extension: a fixed number of tokens, for load tests
    n: int = Field(1, ge=1, le=1)
    chat_template_kwargs: dict[str, Any] | None = None
    grammar: str | None = Field(None, max_length=65536)  # llama-server's extension: GBNF the reply must match


class PromptTokensDetails(BaseModel):
    cached_tokens: int


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    reasoning_content: str | None = None  # vLLM's field: set when thinking was on


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: CompletionUsage
    timings: dict[str, float | int | None] | None = None  # engine timings and vision runs (as llama.cpp's server)


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: CompletionUsage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "exaone-edge"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail
