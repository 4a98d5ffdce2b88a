"""Open a Hugging Face EXAONE 4.5 checkpoint directory and check that every part is present and whole."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from exaone_edge import files
from exaone_edge.errors import CheckpointError
from exaone_edge.spec import ImageSpec, ModelSpec, image_spec, model_spec

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
DTYPE_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
               "F8_E4M3": 1, "F8_E5M2": 1}


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a safetensors shard, as its header describes it (the one record every reader uses)."""

    name: str
    dtype: str  # safetensors dtype string
    shape: tuple[int, ...]
    file: Path
    offset: int = 0  # absolute byte offset of the data in `file`
    nbytes: int = 0

    @property
    def numel(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    config: dict[str, Any]
    spec: ModelSpec
    image: ImageSpec
    tensors: dict[str, TensorInfo]
    chat_template: str
    tokenizer_file: Path

    @cached_property
    def shards(self) -> list[Path]:
        return sorted({info.file for info in self.tensors.values()})


def read_json(path: Path, what: str) -> Any:
    """A checkpoint's JSON file (files.read_json with the checkpoint's error and fix)."""
    return files.read_json(path, what, error=CheckpointError,
                           fix="Copy the whole checkpoint directory from the hub, or re-download this file.")


SAFETENSORS_FIX = "The file is incomplete or corrupt: download it again."


def safetensors_header_bytes(path: Path) -> bytes:
    """A shard's JSON header, as stored (its length checked against the file); the one place a header is read."""
    if not path.is_file():
        raise CheckpointError("safetensors shard is missing", path=path, fix="Download the missing shard.")
    size = path.stat().st_size
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) < 8:
            raise CheckpointError("safetensors shard is truncated (no header)", path=path, fix=SAFETENSORS_FIX)
        (header_len,) = struct.unpack("<Q", raw)
        if header_len > min(size - 8, 100 << 20):
            raise CheckpointError("safetensors header length is impossible", path=path, fix=SAFETENSORS_FIX)
        return handle.read(header_len)


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """Tensor names, dtypes, shapes and absolute offsets; also proves the file holds every byte its header promises."""
    fix = SAFETENSORS_FIX
    raw = safetensors_header_bytes(path)
    header_len, size = len(raw), path.stat().st_size
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError("safetensors header is not valid JSON", path=path, fix=fix) from None
    header.pop("__metadata__", None)
    tensors: dict[str, TensorInfo] = {}
    end = 0
    for name, entry in header.items():
        try:
            start, stop = entry["data_offsets"]
            tensors[name] = TensorInfo(name, entry["dtype"], tuple(entry["shape"]), path, 8 + header_len + start,
                                       stop - start)
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"safetensors header entry '{name}' is malformed", path=path, fix=fix) from None
        end = max(end, stop)
    if 8 + header_len + end > size:
        raise CheckpointError(
            f"safetensors shard is truncated: {size} bytes on disk, header needs {8 + header_len + end}", path=path, fix=fix
        )
    return tensors


def _weight_files(directory: Path) -> list[Path]:
    index_path = directory / INDEX_NAME
    if index_path.exists():
        index = read_json(index_path, "safetensors index")
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError("safetensors index has no 'weight_map'", path=index_path)
        files = sorted(set(weight_map.values()))
        for name in files:
            if not (directory / name).is_file():
                raise CheckpointError(
                    f"safetensors index points at missing shard '{name}'",
                    path=index_path,
                    fix=f"Download {name} into {directory}.",
                )
        return [directory / name for name in files]
    if (directory / SINGLE_NAME).is_file():
        return [directory / SINGLE_NAME]
    raise CheckpointError(
        f"no weights: neither {INDEX_NAME} nor {SINGLE_NAME} exists",
        path=directory,
        fix="Download the *.safetensors files and their index.",
    )


def _chat_template(directory: Path, tokenizer_config: dict[str, Any]) -> str:
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    as_json = directory / "chat_template.json"
    if as_json.is_file():
        return read_json(as_json, "chat template")["chat_template"]
    template = tokenizer_config.get("chat_template")
    if isinstance(template, str) and template:
        return template
    raise CheckpointError(
        "no chat template (chat_template.jinja, chat_template.json or tokenizer_config.json 'chat_template')",
        path=directory,
        fix="Copy the chat template from the original checkpoint.",
    )


def open_checkpoint(directory: Path, *, read_weights: bool = True) -> Checkpoint:
    directory = Path(directory)
    if not directory.exists():
        raise CheckpointError("checkpoint directory does not exist", path=directory, fix="Check the path.")
    if not directory.is_dir():
        raise CheckpointError("not a directory", path=directory, fix="Pass the checkpoint directory, not a file.")
    config_path = directory / "config.json"
    config = read_json(config_path, "config.json")
    if not isinstance(config, dict):
        raise CheckpointError("config.json is not a JSON object", path=config_path)
    spec = model_spec(config, config_path)

    tokenizer_file = directory / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise CheckpointError(
            "tokenizer is missing (tokenizer.json)", path=tokenizer_file, fix="Copy tokenizer.json from the checkpoint."
        )
    tokenizer_config_path = directory / "tokenizer_config.json"
    tokenizer_config = read_json(tokenizer_config_path, "tokenizer_config.json") if tokenizer_config_path.exists() else {}
    preprocessor_path = directory / "preprocessor_config.json"
    image = image_spec(read_json(preprocessor_path, "image processor config"), preprocessor_path)
    if (image.patch_size, image.merge_size, image.temporal_patch_size) != (
        spec.vision.patch_size, spec.vision.spatial_merge_size, spec.vision.temporal_patch_size
    ):
        raise CheckpointError(
            "preprocessor_config.json patch/merge/temporal sizes disagree with config.json vision_config",
            path=preprocessor_path,
        )
    template = _chat_template(directory, tokenizer_config)

    tensors: dict[str, TensorInfo] = {}
    if read_weights:
        for shard in _weight_files(directory):
            tensors.update(read_safetensors_header(shard))
        index_path = directory / INDEX_NAME
        if index_path.exists():
            missing = set(read_json(index_path, "safetensors index")["weight_map"]) - set(tensors)
            if missing:
                raise CheckpointError(
                    f"{len(missing)} tensors listed in the index are in no shard (e.g. {sorted(missing)[0]})",
                    path=index_path,
                )
    return Checkpoint(directory, config, spec, image, tensors, template, tokenizer_file)
