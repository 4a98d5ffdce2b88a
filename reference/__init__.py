"""The transformers reference, below the stages that compare against it (validate, quantize's GPTQ check):
the checkpoint run one decoder layer at a time (`streamed`), its inputs (`inputs`), the cached reference
file (`file`), and eager GPTQ kernels (`kernels`). Imports only the core."""
