"""GBNF grammars checked before llama.cpp sees them.

llama.cpp's grammar parser recurses once per nested group and segfaults on deep nesting (llama.cpp issue
#26600; fix PR #26602 not merged at the vendored commit 0c1e570), taking the whole process with it, and its
left-recursion check recurses over rule references. So a grammar's nesting depth, rule count and length
are bounded here, by a scan that never recurses, and only a grammar inside the bounds reaches the parser.
"""

from __future__ import annotations

import re

from exaone_edge.errors import InputError

MAX_GRAMMAR_CHARS = 65_536
# Nested groups. The schema converter writes `maxItems: n` as n nested optional groups, so document schemas need a
# few hundred; measured here: 512 deep parses in 1 ms in a worker thread, 2,048 llama.cpp refuses itself (its
# MAX_REPETITION_THRESHOLD), and the parser's segfault (#26600) is at tens of thousands.
MAX_GRAMMAR_DEPTH = 512
MAX_GRAMMAR_RULES = 1024
# Comments, string literals and character classes are skipped whole (brackets inside them are text).
_TOKENS = re.compile(r'#[^\n]*|"(?:[^"\\\n]|\\.)*"|\[(?:[^\]\\\n]|\\.)*\]|[()]|::=', re.DOTALL)


def check_grammar_shape(grammar: str, *, param: str = "grammar") -> None:
    """InputError unless `grammar` is within the length, nesting and rule bounds above."""
    if len(grammar) > MAX_GRAMMAR_CHARS:
        raise InputError(f"{param}: {len(grammar):,} characters, the limit is {MAX_GRAMMAR_CHARS:,}")
    depth = deepest = rules = 0
    for match in _TOKENS.finditer(grammar):
        token = match.group()
        if token == "(":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > MAX_GRAMMAR_DEPTH:
                raise InputError(f"{param}: groups nest deeper than {MAX_GRAMMAR_DEPTH} levels",
                                 fix="Flatten the grammar into named rules.")
        elif token == ")":
            depth -= 1
            if depth < 0:
                raise InputError(f"{param}: a ')' at character {match.start()} closes no group")
        elif token == "::=":
            rules += 1
            if rules > MAX_GRAMMAR_RULES:
                raise InputError(f"{param}: more than {MAX_GRAMMAR_RULES} rules")
    if depth:
        raise InputError(f"{param}: {depth} group(s) are not closed")
