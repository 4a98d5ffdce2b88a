"""Accuracy-regression reports per quantization level, and the regression gate."""
