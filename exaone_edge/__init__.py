"""exaone-edge: EXAONE 4.5 from a Hugging Face checkpoint to an on-prem document-AI service."""

__version__ = "0.1.0"
