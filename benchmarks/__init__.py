"""Benchmarks: speed and memory of the toolkit as ratios against baselines measured in the same run.

`exaone-edge bench BUNDLE --model-dir CHECKPOINT` runs them (see `suite.py`). The standalone scripts
here (`convert_memory.py`, `vision_export_memory.py`) measure one stage on purpose-built checkpoints.
"""
