"""The runtime's prompt assembly equals the Hugging Face processor's `input_ids`, token for token."""

from __future__ import annotations

import pytest

from exaone_edge.errors import InputError
from exaone_edge.runtime.prompt import ChatFormat, message_images
from runtime_fixtures import hf_processor as make_hf_processor, noise_image


_image = noise_image


@pytest.fixture(scope="module")
def hf_processor(tiny_model_dir):
    return make_hf_processor(tiny_model_dir)


@pytest.fixture(scope="module")
def chat(tiny_model_dir):
    import json

    config = json.loads((tiny_model_dir / "config.json").read_text())
    return ChatFormat.from_files(tiny_model_dir, config["image_token_id"])


def _rows(model_dir, images) -> list[int]:
    """Vision rows per image as the runtime counts them (t·h·w / merge², torch-free)."""
    import json

    from exaone_edge.spec import image_spec
    from exaone_edge.vision import rows_for

    path = model_dir / "preprocessor_config.json"
    spec = image_spec(json.loads(path.read_text()), path)
    return [rows_for(image.size, spec) for image in images]


def _hf_ids(processor, messages) -> list[int]:
    out = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="np"
    )
    return out["input_ids"][0].tolist()


CONVERSATIONS = {
    "text-only": [{"role": "user", "content": "What is the total on invoice 2024-117? 합계는 얼마입니까?"}],
    "one-image": [
        {
            "role": "user",
            "content": [{"type": "image", "image": _image(100, 70, 0)}, {"type": "text", "text": "What is this?"}],
        }
    ],
    "two-images": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Compare page one"},
                {"type": "image", "image": _image(64, 200, 1)},
                {"type": "text", "text": "with page two:"},
                {"type": "image", "image": _image(333, 121, 2)},
            ],
        }
    ],
    "multi-turn": [
        {"role": "system", "content": "You read contracts. 계약서를 읽습니다."},
        {
            "role": "user",
            "content": [{"type": "image", "image": _image(96, 96, 3)}, {"type": "text", "text": "Who signs?"}],
        },
        {"role": "assistant", "content": "The lessee, Kim Min-jun."},
        {"role": "user", "content": [{"type": "text", "text": "And the date?"}]},
    ],
}


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_token_ids_and_image_positions_match_hf_processor(name, chat, hf_processor, tiny_model_dir):
    messages = CONVERSATIONS[name]
    images = message_images(messages)
    prompt = chat.encode(messages, _rows(tiny_model_dir, images))
    expected = _hf_ids(hf_processor, messages)
    assert prompt.ids == expected
    image_id = hf_processor.image_token_id
    hf_positions = [i for i, token in enumerate(expected) if token == image_id]
    ours = [slot.start + r for slot in prompt.images for r in range(slot.rows)]
    assert ours == hf_positions
    assert len(prompt.images) == len(images)


def test_rendering_matches_tokenizer_template(chat, hf_processor):
    messages = CONVERSATIONS["multi-turn"]
    expected = hf_processor.tokenizer.apply_chat_template(
        [{**m, "content": m["content"]} for m in messages], add_generation_prompt=True, tokenize=False
    )
    assert chat.render(messages) == expected
    assert chat.render(messages, template_kwargs={"enable_thinking": True}).endswith("[|assistant|]")


def test_user_text_cannot_forge_image_placeholders(chat):
    with pytest.raises(InputError, match="reserved image placeholder"):
        chat.encode([{"role": "user", "content": "look: <|image_pad|>"}], [])


def test_image_part_without_image_is_rejected():
    with pytest.raises(InputError, match="no decoded image"):
        message_images([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])


def test_decode_round_trip(chat):
    text = "Net revenue rose 12% to ₩3.4조."
    ids = chat.tokenizer.encode(text, add_special_tokens=False).ids
    assert chat.decode(ids) == text
