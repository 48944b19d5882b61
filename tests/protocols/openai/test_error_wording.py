"""No text an OpenAI client can be shown spells a Runware parameter name (issue 21: the
context-length error said "maxTokens (8192)" while its param said `max_tokens`).

Messages are built below the protocols (domain, engines, http, tools, errors.py) and reach both
protocols' clients; each protocol names the parameter itself, in its own `param`/`parameter`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import kimiserve

RUNWARE_NAMES = ("maxTokens", "numberResults", "systemPrompt", "stopSequences", "thinkingLevel")
SHARED = ("domain", "engines", "http", "tools", "errors.py", "services.py")


def _string_literals(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def test_shared_messages_spell_no_runware_parameter() -> None:
    root = Path(kimiserve.__file__).parent
    found = []
    for part in SHARED:
        paths = [root / part] if part.endswith(".py") else sorted((root / part).rglob("*.py"))
        for path in paths:
            for line, text in _string_literals(path):
                for name in RUNWARE_NAMES:
                    if name in text:
                        found.append(f"{path.relative_to(root)}:{line}: {name} in {text!r}")
    assert not found, "\n".join(found)
