"""Prompt assembly identical to the Hugging Face processor, without torch or transformers.

The checkpoint's chat template is rendered with the same Jinja environment and variables as
transformers' `apply_chat_template`; each image placeholder is expanded to one `<|image_pad|>` per
vision row (t·h·w / merge²) and the text is tokenized with `tokenizers` from `tokenizer.json`,
exactly as `Exaone4_5_Processor` does it. Positions holding the image token take the vision rows.

One deliberate difference: a special token's text inside a message, a tool declaration or a tool call
(`<|endofturn|>\n<|assistant|>\n` typed by a user, or found in a document) is tokenized as plain text, never
as the control token, so such text cannot open or close turns. Only markers the template writes become
control tokens. The reasoning and tool-call markers (`<think>`, `<tool_call>`, …) are ordinary
(non-special) added tokens and stay what the tokenizer makes of them, as in llama.cpp with special parsing off.

Messages follow the OpenAI shape and are normalized before rendering, as vLLM does: an assistant's
`tool_calls[].function.arguments` JSON string becomes the object the template writes out, and the content of
system, assistant and tool messages given as a list of text parts becomes their concatenation (the released
template expects a string there; user parts are rendered one by one).
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from exaone_edge.errors import ArtifactError, InputError
from exaone_edge.runtime.tool_calls import TOOL_CALL_MARKERS

IMAGE_PART_TYPES = ("image", "image_url")
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
_SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")
REASONING_MARKERS = ("<think>", "</think>")
# Names render() passes to the template itself ("self": jinja2's Template.render would get it twice).
_RENDER_ARGUMENTS = ("messages", "tools", "documents", "add_generation_prompt", "self")


@dataclass(frozen=True)
class ImageSlot:
    index: int  # which image, in message order
    start: int  # position of its first vision row in `Prompt.ids`
    rows: int


@dataclass(frozen=True)
class Prompt:
    text: str  # the rendered chat template, before placeholder expansion
    ids: list[int]  # HF `input_ids`: the image token id at every vision-row position
    images: list[ImageSlot]


def message_images(messages: Sequence[Mapping[str, Any]]) -> list[Any]:
    """The decoded images of every image part, in the order the template will place them."""
    images = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            for part in content:
                if isinstance(part, Mapping) and part.get("type") in IMAGE_PART_TYPES:
                    if part.get("image") is None:
                        raise InputError(f"an '{part.get('type')}' part has no decoded image under 'image'")
                    images.append(part["image"])
    return images


class ChatFormat:
    """Renders a conversation with the checkpoint's template and turns it into token ids."""

    def __init__(self, tokenizer, chat_template: str, special_tokens: dict[str, str], image_token: str) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = tokenizer
        self.special_tokens = special_tokens
        self.image_token = image_token
        image_id = tokenizer.token_to_id(image_token)
        if image_id is None:
            raise ArtifactError(f"the tokenizer has no image token {image_token!r}")
        self.image_token_id: int = image_id
        self._template = _compile(chat_template)
        added = tokenizer.get_added_tokens_decoder()
        # Control tokens by text; longest first so a token that contains another one wins the match.
        self.control_tokens: dict[str, int] = {
            t.content: i for i, t in sorted(added.items(), key=lambda item: -len(item[1].content)) if t.special
        }
        self._control = re.compile("|".join(re.escape(text) for text in self.control_tokens)) if self.control_tokens else None
        self._marker_encodings = {text: tokenizer.encode(text, add_special_tokens=False) for text in self.control_tokens}
        # A second tokenizer that reads control-token text as text (a copy: the flag is per tokenizer object).
        self._as_text = Tokenizer.from_str(tokenizer.to_str())
        self._as_text.encode_special_tokens = True
        # Decoding drops control tokens but keeps the reasoning and tool-call markers, whatever their special flag,
        # for the parsers.
        markers = {tokenizer.token_to_id(m) for m in (*REASONING_MARKERS, *TOOL_CALL_MARKERS)} - {None}
        self._hidden = frozenset(i for i, t in added.items() if t.special and i not in markers)
        self.reasoning_markers: tuple[str, str] | None = (
            REASONING_MARKERS if all(tokenizer.token_to_id(m) is not None for m in REASONING_MARKERS) else None
        )

    @classmethod
    def from_files(cls, directory: Path, image_token_id: int) -> ChatFormat:
        """Load `tokenizer.json`, `tokenizer_config.json` and `chat_template.jinja` from a bundle or checkpoint."""
        from tokenizers import Tokenizer

        directory = Path(directory)
        tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        config_path = directory / "tokenizer_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
        template_path = directory / "chat_template.jinja"
        template = template_path.read_text(encoding="utf-8") if template_path.is_file() else config.get("chat_template")
        if not isinstance(template, str):
            raise ArtifactError("no chat template (chat_template.jinja)", path=directory, fix="Re-create the bundle.")
        image_token = tokenizer.id_to_token(image_token_id)
        if image_token is None:
            raise ArtifactError(f"image_token_id {image_token_id} is not in tokenizer.json", path=directory)
        return cls(tokenizer, template, _special_tokens(config), image_token)

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        template_kwargs: Mapping[str, Any] | None = None,
    ) -> str:
        """The prompt text; `tools` is the OpenAI function-tool list, declared before the first message."""
        chat = [_plain_message(message) for message in messages]
        return self._render(chat, _plain_tools(tools), add_generation_prompt, template_kwargs)

    def _render(self, chat: list[dict[str, Any]], tools: list[dict[str, Any]] | None, add_generation_prompt: bool,
                template_kwargs: Mapping[str, Any] | None) -> str:
        import jinja2

        variables = {**self.special_tokens, **(template_kwargs or {})}
        clash = sorted(set(variables) & set(_RENDER_ARGUMENTS))
        if clash:
            raise InputError(f"template_kwargs may not set {', '.join(clash)}: names the renderer sets itself")
        try:
            return self._template.render(
                messages=chat, tools=tools, documents=None, add_generation_prompt=add_generation_prompt, **variables
            )
        except jinja2.TemplateError as exc:
            raise InputError(f"the chat template rejected the conversation: {exc}") from None

    def encode(
        self,
        messages: Sequence[Mapping[str, Any]],
        image_rows: Sequence[int],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        template_kwargs: Mapping[str, Any] | None = None,
    ) -> Prompt:
        """Token ids with `image_rows[i]` image tokens for the i-th image, as the HF processor makes them.

        Control-token text inside messages and tools is replaced by a random sentinel before rendering, so every
        control token left in the rendered text was written by the template; the text between them is
        tokenized (sentinels restored) with control tokens read as text. Without such text in the
        messages the ids equal the HF processor's, which also splits at added tokens first.
        """
        nonce = secrets.token_hex(8)
        literals: list[str] = []
        chat = _escape([_plain_message(m) for m in messages], self._control, nonce, literals)
        marked = self._render(chat, _escape(_plain_tools(tools), self._control, nonce, literals),
                              add_generation_prompt, template_kwargs)
        sentinel = re.compile(rf"\ue000{nonce}:(\d+)\ue001")

        def restore(text: str) -> str:
            return sentinel.sub(lambda m: literals[int(m.group(1))], text)

        pieces = self._control.split(marked) if self._control else [marked]
        markers = self._control.findall(marked) if self._control else []
        placed = markers.count(self.image_token)
        if placed != len(image_rows):
            raise InputError(
                f"the chat template placed {placed} image placeholders for {len(image_rows)} images",
                fix="Use image parts of type 'image' or 'image_url' inside a message's content list.",
            )
        from tokenizers import Encoding

        encodings, rows = [], iter(image_rows)
        for index, piece in enumerate(pieces):
            if piece:
                encodings.append(self._as_text.encode(restore(piece), add_special_tokens=False))
            if index < len(markers):
                marker = markers[index]
                count = next(rows) if marker == self.image_token else 1
                encodings.extend([self._marker_encodings[marker]] * count)
        text = restore(marked)
        bos = self.special_tokens.get("bos_token")
        # The processor skips special tokens when the template already wrote the BOS itself.
        add_special = not (bos and text.startswith(bos))
        merged = Encoding.merge(encodings) if encodings else self._as_text.encode("", add_special_tokens=False)
        ids = self.tokenizer.post_process(merged, add_special_tokens=add_special).ids
        return Prompt(text=text, ids=ids, images=_image_slots(ids, self.image_token_id, image_rows))

    def starts_in_reasoning(self, template_kwargs: Mapping[str, Any] | None = None) -> bool:
        """Whether the generation prompt leaves the reply inside an open `<think>` (the model reasons first)."""
        if self.reasoning_markers is None:
            return False
        start, end = self.reasoning_markers
        text = self._render([{"role": "user", "content": "?"}], None, True, template_kwargs)
        return text.rfind(start) > text.rfind(end)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        """Text of `ids`; skipping special tokens keeps the reasoning markers (the reasoning parser needs them)."""
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._hidden]
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)


def _image_slots(ids: list[int], image_token_id: int, image_rows: Sequence[int]) -> list[ImageSlot]:
    slots, position = [], 0
    for index, rows in enumerate(image_rows):
        while position < len(ids) and ids[position] != image_token_id:
            position += 1
        if ids[position : position + rows] != [image_token_id] * rows:
            raise InputError(f"image {index + 1}: its {rows} placeholder tokens did not survive tokenization")
        slots.append(ImageSlot(index=index, start=position, rows=rows))
        position += rows
    if image_token_id in ids[position:]:
        raise InputError("the prompt holds more image placeholder tokens than there are vision rows")
    return slots


def _special_tokens(config: Mapping[str, Any]) -> dict[str, str]:
    tokens = {}
    for key in _SPECIAL_TOKEN_KEYS:
        value = config.get(key)
        if isinstance(value, Mapping):
            value = value.get("content")
        if isinstance(value, str):
            tokens[key] = value
    return tokens


def _plain_message(message: Mapping[str, Any]) -> dict[str, Any]:
    """What the template sees: JSON data only (images become a bare `{"type": "image"}` part)."""
    if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
        raise InputError("each message must be an object with a string 'role'")
    role = message["role"]
    plain = {key: _plain(value) for key, value in message.items() if key not in ("content", "tool_calls")}
    content = message.get("content")
    if isinstance(content, list):
        parts = [_plain_part(part) for part in content]
        if role == "user":
            content = parts
        elif all(part["type"] == "text" for part in parts):
            content = "".join(part["text"] for part in parts)
        else:
            raise InputError(f"{role} messages may hold only text parts", fix="Send images in user messages.")
    elif content is None:
        if role != "assistant":
            raise InputError(f"a {role} message needs 'content' (a string or a list of parts)")
    elif not isinstance(content, str):
        raise InputError("message content must be a string or a list of parts")
    plain["content"] = content
    if message.get("tool_calls") is not None:
        calls = message["tool_calls"]
        if role != "assistant" or not isinstance(calls, list):
            raise InputError("'tool_calls' must be a list, on an assistant message")
        plain["tool_calls"] = [_plain_tool_call(call, index) for index, call in enumerate(calls)]
    # transformers aliases the reasoning fields so templates reading any of the names see it.
    reasoning = next((plain[key] for key in _REASONING_FIELDS if plain.get(key) is not None), None)
    if reasoning is not None:
        plain = {"thinking": reasoning, **plain, "reasoning_content": reasoning}
    return plain


def _plain_part(part: Any) -> dict[str, Any]:
    if not isinstance(part, Mapping) or not isinstance(part.get("type"), str):
        raise InputError("each content part must be an object with a string 'type'")
    if part["type"] in IMAGE_PART_TYPES:
        return {"type": "image"}
    if part["type"] == "text" and not isinstance(part.get("text"), str):
        raise InputError("a text part needs a string 'text'")
    if part["type"] in ("video", "video_url"):
        raise InputError("video parts are not supported", fix="Send the frames as images.")
    return {key: _plain(value) for key, value in part.items()}


def _plain_tool_call(call: Any, index: int) -> dict[str, Any]:
    """An OpenAI tool call with `function.arguments` parsed: the template writes the object out as JSON."""
    where = f"tool_calls[{index}].function"
    function = call.get("function", call) if isinstance(call, Mapping) else None  # flat {"name", "arguments"} too
    if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
        raise InputError(f"{where}.name must be a string")
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except (ValueError, RecursionError) as exc:
            raise InputError(f"{where}.arguments is not valid JSON ({exc})",
                             fix="Send the arguments object as a JSON string, as the API returned it.") from None
    if not isinstance(arguments, Mapping):
        raise InputError(f"{where}.arguments must be a JSON object, got {type(arguments).__name__}")
    plain = {key: _plain(value) for key, value in call.items() if key != "function"}
    return {**plain, "function": {**_plain(function), "arguments": _plain(arguments)}}


def _plain_tools(tools: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]] | None:
    if tools is None:
        return None
    if not isinstance(tools, Sequence) or not all(isinstance(tool, Mapping) for tool in tools):
        raise InputError("'tools' must be a list of objects")
    return [_plain(tool) for tool in tools]


def _escape(value: Any, control: re.Pattern | None, nonce: str, literals: list[str]) -> Any:
    """`value` with control-token text in its strings and keys replaced by sentinels (`literals` collects the
    originals)."""
    if control is None:
        return value

    def escape(item: Any) -> Any:
        if isinstance(item, str):
            def swap(match: re.Match) -> str:
                literals.append(match.group(0))
                return f"\ue000{nonce}:{len(literals) - 1}\ue001"

            return control.sub(swap, item)
        if isinstance(item, dict):
            return {escape(key): escape(inner) for key, inner in item.items()}
        if isinstance(item, list):
            return [escape(inner) for inner in item]
        return item

    return escape(value)


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return f"<{type(value).__name__}>"


def _compile(template: str):
    """A sandboxed environment configured as transformers configures it for chat templates."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTag(jinja2.ext.Extension):
        # `{% generation %}…{% endgeneration %}` marks assistant spans; rendering passes the body through.
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message: str):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.globals["namespace"] = jinja2.utils.Namespace
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as exc:
        raise ArtifactError(f"the chat template does not parse: {exc}", fix="Re-create the bundle.") from None
