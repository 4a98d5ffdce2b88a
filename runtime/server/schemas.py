"""OpenAI chat-completions request and response shapes (the subset this server implements), as typed models.

A request field this server does not implement is refused (400, code `unsupported_parameter`) rather than
silently dropped; known fields are type-checked. Implemented beyond the basics: `tools` / `tool_choice` /
`parallel_tool_calls` (EXAONE 4.5's `<tool_call>` format, constrained by a grammar when a call is required),
`response_format` (`json_object`, `json_schema`: a grammar guarantees the JSON), `logprobs` / `top_logprobs`.
Extensions: `top_k`, `min_p`, `chat_template_kwargs` (as vLLM; `enable_thinking` turns reasoning on or off),
`grammar` (as llama-server), `ignore_eos` (as vLLM), `reasoning_content` on assistant messages, and `pages`
on image/file parts (PDFs). With thinking on, replies carry `reasoning_content` beside `content`, in whole
messages and as their own stream deltas (as vLLM). `user` is accepted and not used (OpenAI's end-user id).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_TOOLS = 128  # OpenAI's limit


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


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


class FunctionCall(_Request):
    name: str = Field(max_length=64)
    arguments: str  # a JSON object as text, as OpenAI sends it


class ToolCall(_Request):
    id: str = Field(max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    tool_calls: list[ToolCall] | None = Field(None, max_length=MAX_TOOLS)  # assistant turns
    tool_call_id: str | None = Field(None, max_length=256)  # tool turns: the call this result answers
    reasoning_content: str | None = None  # assistant turns (vLLM's field): kept after the last user question


class FunctionDefinition(_Request):
    name: str = Field(max_length=64, pattern=r"^[A-Za-z0-9_-]+$")  # OpenAI's rule for function names
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON Schema for the arguments object
    strict: bool | None = None  # calls are always grammar-constrained when a call is required


class Tool(_Request):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Request):
    name: str = Field(max_length=64)


class NamedToolChoice(_Request):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(_Request):
    name: str = Field(max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Request):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


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
    tools: list[Tool] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    response_format: ResponseFormat | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    user: str | None = Field(None, max_length=256)


class PromptTokensDetails(BaseModel):
    cached_tokens: int


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class FunctionCallOut(BaseModel):
    name: str
    arguments: str


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None  # None when the reply is only tool calls
    reasoning_content: str | None = None  # vLLM's field: set when thinking was on
    tool_calls: list[ToolCallOut] | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob]


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: CompletionUsage
    timings: dict[str, float | int | None] | None = None  # engine timings and vision runs (as llama.cpp's server)


class ToolCallDelta(BaseModel):
    index: int
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None


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
