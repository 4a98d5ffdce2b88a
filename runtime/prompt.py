"""Prompt assembly identical to the Hugging Face processor, without torch or transformers.

The checkpoint's chat template is rendered with the same Jinja environment and variables as
transformers' `apply_chat_template`; each image placeholder is expanded to one `<|image_pad|>` per
vision row (t·h·w / merge²) and the text is tokenized with `tokenizers` from `tokenizer.json`,
exactly as `Exaone4_5_Processor` does it. Positions holding the image token take the vision rows.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from exaone_edge.errors import ArtifactError, InputError

IMAGE_PART_TYPES = ("image", "image_url")
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
_SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")


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
        self.tokenizer = tokenizer
        self.special_tokens = special_tokens
        self.image_token = image_token
        image_id = tokenizer.token_to_id(image_token)
        if image_id is None:
            raise ArtifactError(f"the tokenizer has no image token {image_token!r}")
        self.image_token_id: int = image_id
        self._template = _compile(chat_template)

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
        add_generation_prompt: bool = True,
        template_kwargs: Mapping[str, Any] | None = None,
    ) -> str:
        import jinja2

        chat = [_plain_message(message) for message in messages]
        for message in chat:
            content = message.get("content")
            texts = [content] if isinstance(content, str) else [p.get("text") for p in content or [] if isinstance(p, dict)]
            if any(isinstance(text, str) and self.image_token in text for text in texts):
                raise InputError(f"message text contains the reserved image placeholder {self.image_token!r}")
        variables = {**self.special_tokens, **(template_kwargs or {})}
        try:
            return self._template.render(
                messages=chat, tools=None, documents=None, add_generation_prompt=add_generation_prompt, **variables
            )
        except jinja2.TemplateError as exc:
            raise InputError(f"the chat template rejected the conversation: {exc}") from None

    def encode(
        self,
        messages: Sequence[Mapping[str, Any]],
        image_rows: Sequence[int],
        *,
        add_generation_prompt: bool = True,
        template_kwargs: Mapping[str, Any] | None = None,
    ) -> Prompt:
        """Token ids with `image_rows[i]` image tokens for the i-th image, as the HF processor makes them."""
        text = self.render(messages, add_generation_prompt=add_generation_prompt, template_kwargs=template_kwargs)
        pieces = text.split(self.image_token)
        if len(pieces) - 1 != len(image_rows):
            raise InputError(
                f"the chat template placed {len(pieces) - 1} image placeholders for {len(image_rows)} images",
                fix="Use image parts of type 'image' or 'image_url' inside a message's content list.",
            )
        expanded = pieces[0] + "".join(self.image_token * rows + piece for rows, piece in zip(image_rows, pieces[1:]))
        bos = self.special_tokens.get("bos_token")
        # The processor skips special tokens when the template already wrote the BOS itself.
        add_special = not (bos and text.startswith(bos))
        ids = self.tokenizer.encode(expanded, add_special_tokens=add_special).ids
        return Prompt(text=text, ids=ids, images=_image_slots(ids, self.image_token_id, image_rows))

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)


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
    plain = {key: _plain(value) for key, value in message.items() if key != "content"}
    content = message.get("content")
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, Mapping) or not isinstance(part.get("type"), str):
                raise InputError("each content part must be an object with a string 'type'")
            if part["type"] in IMAGE_PART_TYPES:
                parts.append({"type": "image"})
            else:
                parts.append({key: _plain(value) for key, value in part.items()})
        plain["content"] = parts
    elif content is None or isinstance(content, str):
        plain["content"] = content
    else:
        raise InputError("message content must be a string or a list of parts")
    # transformers aliases the reasoning fields so templates reading any of the names see it.
    reasoning = next((plain[key] for key in _REASONING_FIELDS if plain.get(key) is not None), None)
    if reasoning is not None:
        plain = {"thinking": reasoning, **plain, "reasoning_content": reasoning}
    return plain


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
