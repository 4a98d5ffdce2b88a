"""Config fields read where the published readers read them: the MTP layer count and the default page limits."""

from __future__ import annotations

import json

import pytest

from exaone_edge.errors import CheckpointError
from exaone_edge.spec import RELEASED_33B_CONFIG, model_spec
from exaone_edge.vision.preprocess import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS


def _config(top: int | None, text: int | None) -> dict:
    config = json.loads(RELEASED_33B_CONFIG.read_text())
    config.pop("num_nextn_predict_layers", None)
    config["text_config"].pop("num_nextn_predict_layers", None)
    if top is not None:
        config["num_nextn_predict_layers"] = top
    if text is not None:
        config["text_config"]["num_nextn_predict_layers"] = text
    return config


@pytest.mark.parametrize("top, text, layers", [(1, None, 1), (None, 1, 1), (1, 1, 1), (None, None, 0), (0, 0, 0)])
def test_mtp_layers_are_read_at_the_top_level_and_in_text_config(top, text, layers):
    """vLLM reads num_nextn_predict_layers at the config's top level, transformers' layout nests it (NOTES.md)."""
    assert model_spec(_config(top, text), RELEASED_33B_CONFIG).decoder.nextn_layers == layers


def test_mtp_layer_counts_that_disagree_are_refused():
    with pytest.raises(CheckpointError, match="num_nextn_predict_layers is 2 at the top level but 1 in text_config"):
        model_spec(_config(2, 1), RELEASED_33B_CONFIG)


def test_default_page_limits_are_the_transformers_image_processor_defaults():
    import transformers
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES

    # The class AutoImageProcessor builds for exaone4_5 (its PIL variant needs no torchvision).
    size = getattr(transformers, IMAGE_PROCESSOR_MAPPING_NAMES["exaone4_5"]["pil"])().size
    assert (size.shortest_edge, size.longest_edge) == (DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS) == (3_136, 1_003_520)
