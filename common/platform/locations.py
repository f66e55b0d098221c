"""Where a field of a YAML (or JSON) document is in its text.

A field is named as problems name it: ``steps[1].query``,
``steps[2].parallel[0].steps[0].id``, ``parameters.min_damage``. It is looked
up in the nodes the text was composed into, as deep as the document goes: a
field that is missing is found as the mapping that should hold it, a value
inside a scalar (a union's branch, a tag pydantic adds) as that scalar.

Lines and columns are 1-based; the end is just past the last character, as
editors mark a range.
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml


@dataclass(frozen=True)
class Span:
    line: int
    column: int
    end_line: int
    end_column: int

    @classmethod
    def of(cls, node: yaml.Node) -> Span:
        start, end = node.start_mark, node.end_mark
        return cls(start.line + 1, start.column + 1, end.line + 1, end.column + 1)

    @classmethod
    def at(cls, mark: yaml.error.Mark) -> Span:
        """One character: where a parser stopped."""
        return cls(mark.line + 1, mark.column + 1, mark.line + 1, mark.column + 2)


def locate(root: yaml.Node, field: str, *, key: bool = False) -> Span:
    """Where *field* is under *root*: its value, or with *key* its key (an unknown field's)."""
    key_node, node = _find(root, field)
    return Span.of(key_node if key and key_node is not None else node)


def _find(node: yaml.Node, field: str) -> tuple[yaml.Node | None, yaml.Node]:
    """The deepest node on *field*'s path, and the key it is under (if the whole path was found)."""
    rest = field
    key_node: yaml.Node | None = None
    while rest:
        if rest.startswith("["):
            index_text, bracket, after = rest[1:].partition("]")
            if not (bracket and index_text.isdigit() and isinstance(node, yaml.SequenceNode)):
                return None, node
            index = int(index_text)
            if index >= len(node.value):
                return None, node
            key_node, node = None, node.value[index]
            rest = after.removeprefix(".")
            continue
        if not isinstance(node, yaml.MappingNode):
            return None, node
        entry = _entry(node, rest)
        if entry is None:
            return None, node
        name, (key_node, node) = entry
        rest = rest[len(name) :].removeprefix(".")
    return key_node, node


def _entry(node: yaml.MappingNode, path: str) -> tuple[str, tuple[yaml.Node, yaml.Node]] | None:
    """The entry of *node* whose key starts *path*: the longest (a key may hold a dot), the last of equals
    (as the document keeps a repeated key's last value)."""
    found: tuple[str, tuple[yaml.Node, yaml.Node]] | None = None
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            continue
        name = str(key_node.value)
        follows = path[len(name) : len(name) + 1]
        longest = found is None or len(name) >= len(found[0])
        if path.startswith(name) and follows in ("", ".", "[") and longest:
            found = name, (key_node, value_node)
    return found
