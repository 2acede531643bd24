"""Choosing the connection node: where the new head attaches, after the fine-tuning node."""

from __future__ import annotations

from collections.abc import Sequence

from cad.errors import ConfigError, did_you_mean


def choose_connection_node(
    nodes: Sequence[str], shapes: dict[str, Sequence[int]], finetune: str, rule: str
) -> str:
    """Apply ``rule`` (next | same | last | a node name) to the ordered candidate ``nodes``.

    ``next`` is the next candidate node (the design's default: the block right after the
    fine-tuning node is re-trained, the network beyond it discarded); ``same`` attaches the
    head at the fine-tuning node itself; ``last`` keeps every later block.
    """
    position = list(nodes).index(finetune)
    later = list(nodes)[position + 1 :]
    if rule == "same" or not later:
        return finetune
    if rule == "last":
        return later[-1]
    if rule == "next":
        return later[0]
    if rule not in nodes:
        raise ConfigError(
            f"finetune.connection: '{rule}' is not next, same, last or a candidate node;"
            f"{did_you_mean(rule, list(nodes) + ['next', 'same', 'last'])}"
        )
    if list(nodes).index(rule) < position:
        return finetune  # a named node before the fine-tuning node cannot hold the head
    return rule
