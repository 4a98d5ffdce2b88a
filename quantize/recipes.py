"""Quantization recipes: one table mapping a level to llama.cpp's file type and how it is calibrated."""

from __future__ import annotations

from dataclasses import dataclass, replace

from exaone_edge.errors import InputError
from exaone_edge.levels import LEVELS


@dataclass(frozen=True)
class Recipe:
    level: str  # llama.cpp's name, also the key in exaone_edge.levels
    ftype: int  # llama_ftype
    uses_imatrix: bool  # Q8_0 rounds each block on its own; the k-/i-quants weigh columns by importance

    @property
    def bits(self) -> int:
        """The --bits family it belongs to."""
        return LEVELS[self.level].bits


RECIPES: dict[str, Recipe] = {
    recipe.level: recipe
    for recipe in (
        Recipe("F16", 1, uses_imatrix=False),  # the unquantized reference level for validation
        Recipe("Q8_0", 7, uses_imatrix=False),
        Recipe("Q6_K", 18, uses_imatrix=True),
        Recipe("Q5_K_M", 17, uses_imatrix=True),
        Recipe("Q4_K_M", 15, uses_imatrix=True),
        Recipe("Q4_K_S", 14, uses_imatrix=True),
        Recipe("IQ4_XS", 30, uses_imatrix=True),
    )
}
DEFAULT_FOR_BITS = {8: "Q8_0", 6: "Q6_K", 5: "Q5_K_M", 4: "Q4_K_M"}
assert set(RECIPES) <= set(LEVELS)


def choose_recipe(bits: int | None, recipe: str | None, imatrix: bool = True) -> Recipe:
    """See `_choose`; `imatrix=False` quantizes without the importance matrix (for comparisons)."""
    chosen = _choose(bits, recipe)
    return chosen if imatrix else replace(chosen, uses_imatrix=False)


def _choose(bits: int | None, recipe: str | None) -> Recipe:
    """`--bits` picks the default recipe of its family; `--recipe` picks one by name and must agree with `--bits`."""
    if recipe is not None:
        key = recipe.upper()
        if key not in RECIPES:
            raise InputError(f"unknown recipe '{recipe}'", fix=f"Use one of: {', '.join(RECIPES)}.")
        chosen = RECIPES[key]
        if bits is not None and bits != chosen.bits:
            raise InputError(f"recipe {chosen.level} is a {chosen.bits}-bit recipe, but --bits {bits} was given",
                             fix="Drop --bits or pick a recipe of that width.")
        return chosen
    bits = 4 if bits is None else bits
    if bits not in (4, 8):
        raise InputError(f"--bits {bits} is not supported", fix="Use --bits 4 (Q4_K_M) or --bits 8 (Q8_0), or --recipe.")
    return RECIPES[DEFAULT_FOR_BITS[bits]]
