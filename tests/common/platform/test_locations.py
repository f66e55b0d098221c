"""Field paths found in composed YAML: values, keys, the deepest node of a path that is not there."""

from __future__ import annotations

import yaml

from common.platform.locations import Span, locate

TEXT = """\
name: x
headers:
  a.b: dotted
  a: plain
steps:
  - id: first
    parallel:
      - steps:
          - id: inner
"""
ROOT = yaml.compose(TEXT)


def test_a_nested_value_is_found_through_indices() -> None:
    assert locate(ROOT, "steps[0].parallel[0].steps[0].id") == Span(9, 17, 9, 22)


def test_a_key_that_holds_a_dot_is_found_whole_and_a_key_is_marked_when_asked() -> None:
    assert locate(ROOT, "headers.a.b") == Span(3, 8, 3, 14)
    assert locate(ROOT, "headers.a") == Span(4, 6, 4, 11)
    assert locate(ROOT, "headers.a.b", key=True) == Span(3, 3, 3, 6)


def test_a_path_that_is_not_there_ends_at_the_deepest_node_found() -> None:
    step = locate(ROOT, "steps[0]")
    assert locate(ROOT, "steps[0].query") == step
    assert locate(ROOT, "steps[0].query", key=True) == step
    assert locate(ROOT, "steps[5].id") == locate(ROOT, "steps")
    assert locate(ROOT, "name.more") == Span(1, 7, 1, 8)
    assert locate(ROOT, "") == Span.of(ROOT)
