"""The artifact registry (exaone_edge/formats.py) and the typed manifest details every reader goes through."""

from __future__ import annotations

from pathlib import Path

import pytest

from exaone_edge.bundle import BundleDetails, DecoderDetails
from exaone_edge.errors import ArtifactError
from exaone_edge.formats import ARTIFACTS, QUANTIZE_FORMATS, GptqDetails
from exaone_edge.manifest import Manifest, typed_details
from exaone_edge.vision.contract import VisionDetails
from conftest import run_cli


def test_validate_judges_every_registered_artifact_and_nothing_else():
    from exaone_edge.validate.candidates import JUDGES

    assert set(JUDGES) == set(ARTIFACTS)


def test_quantize_offers_exactly_the_registered_formats(tmp_path):
    assert QUANTIZE_FORMATS == {"gguf": "bundle", "gptq": "gptq"}
    result = run_cli("quantize", str(tmp_path), "-o", str(tmp_path / "out"), "--format", "awq")
    assert result.returncode == 2 and "--format must be one of gguf, gptq, got 'awq'" in result.stderr


def test_details_are_typed_nested_and_checked_by_name():
    path = Path("bundle/manifest.json")
    data = {"decoder": {"level": "Q4_K_M", "bits_per_weight": 4.8, "imatrix": True},
            "vision": {"precision": "int8w", "source_manifest": {"checkpoint": "x"}}}
    details = typed_details(BundleDetails, Manifest(kind="bundle", details=data), path)
    assert details.decoder == DecoderDetails("Q4_K_M", 4.8, imatrix=True) and details.vision.precision == "int8w"
    assert details.name == "Q4_K_M +imatrix"
    with pytest.raises(ArtifactError, match=r"details\.decoder\.level is missing"):
        typed_details(BundleDetails, Manifest(kind="bundle", details={"decoder": {}}), path)
    with pytest.raises(ArtifactError, match=r"details\.spec is missing"):
        typed_details(VisionDetails, Manifest(kind="vision-onnx", details={"precision": "fp16"}), path)
    with pytest.raises(ArtifactError, match=r"details is not an object"):
        typed_details(GptqDetails, Manifest(kind="gptq", details=[]), path)  # type: ignore[arg-type]
