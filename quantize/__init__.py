"""Decoder → GGUF (llama.cpp) and its quantized levels; heavy imports stay inside the stage functions."""
