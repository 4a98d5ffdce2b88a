"""Bundle loading: checksums verified, missing or altered files named, the CLI reports them in one line."""

from __future__ import annotations

import json
import shutil

import pytest

from exaone_edge.errors import ArtifactError
from exaone_edge.manifest import Manifest, write_manifest
from exaone_edge.bundle import load_bundle
from conftest import run_cli

CHECKPOINT_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "preprocessor_config.json")


@pytest.fixture()
def files_bundle(tiny_model_dir, tmp_path):
    """A bundle with the real configs and tokenizer; the decoder and encoder are placeholder bytes (never loaded)."""
    bundle = tmp_path / "bundle"
    (bundle / "vision").mkdir(parents=True)
    for name in CHECKPOINT_FILES:
        shutil.copy(tiny_model_dir / name, bundle / name)
    (bundle / "decoder.gguf").write_bytes(b"GGUF" + bytes(range(256)) * 4)
    (bundle / "vision" / "vision.onnx").write_bytes(b"onnx" * 100)
    write_manifest(bundle, Manifest(kind="bundle", details={"decoder": {"level": "F32"}}))
    return bundle


def test_loads_and_reads_specs(files_bundle):
    bundle = load_bundle(files_bundle)
    assert bundle.spec.decoder.num_layers == 64
    assert bundle.image.patch_size == bundle.spec.vision.patch_size == 14
    assert bundle.eos_token_ids == {53}
    assert bundle.decoder_path.name == "decoder.gguf"


def test_altered_file_is_named(files_bundle):
    path = files_bundle / "decoder.gguf"
    data = bytearray(path.read_bytes())
    data[100] ^= 1  # same size, one bit flipped
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="decoder.gguf: file does not match its checksum"):
        load_bundle(files_bundle)
    load_bundle(files_bundle, verify=False)  # sizes only: a same-size change passes, by design


def test_truncated_file_fails_even_without_hashing(files_bundle):
    (files_bundle / "vision" / "vision.onnx").write_bytes(b"short")
    with pytest.raises(ArtifactError, match="vision.onnx: file size differs"):
        load_bundle(files_bundle, verify=False)


def test_missing_file_is_named(files_bundle):
    (files_bundle / "tokenizer.json").unlink()
    with pytest.raises(ArtifactError, match="tokenizer.json: file listed in manifest.json is missing"):
        load_bundle(files_bundle)


def test_not_a_bundle(files_bundle, tmp_path):
    manifest = json.loads((files_bundle / "manifest.json").read_text())
    manifest["kind"] = "vision-onnx"
    (files_bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="expected a 'bundle'"):
        load_bundle(files_bundle)
    with pytest.raises(ArtifactError, match="not found"):
        load_bundle(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ArtifactError, match="no manifest.json"):
        load_bundle(empty)


def test_bundle_must_list_required_files(files_bundle):
    manifest = json.loads((files_bundle / "manifest.json").read_text())
    del manifest["files"]["chat_template.jinja"]
    (files_bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="does not list 'chat_template.jinja'"):
        load_bundle(files_bundle)


def test_cli_run_reports_a_broken_bundle_in_one_line(files_bundle, tmp_path):
    (files_bundle / "config.json").write_text("{}")
    result = run_cli("run", str(files_bundle), "What is the total?")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "config.json" in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    image = tmp_path / "page.png"
    image.write_bytes(b"not a png")
    result = run_cli("run", str(tmp_path / "missing"), "q", "--pages", "1")
    assert result.returncode == 2 and result.stderr.startswith("error: --pages needs --pdf")
