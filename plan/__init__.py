"""The check-and-fit stage: `inspect` (what a checkpoint holds) and `plan` (what fits a GPU, and what each
command will cost on a box), built on the core's memory model (exaone_edge/memory.py)."""
