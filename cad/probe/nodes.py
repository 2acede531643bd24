"""Choosing the connection node: where the new head attaches, after the fine-tuning node."""

from __future__ import annotations

import math
from collections.abc import Sequence

from cad.errors import ConfigError, did_you_mean


def dimensionality(shape: Sequence[int]) -> int:
    return math.prod(shape)


def choose_connection_node(
    nodes: Sequence[str], shapes: dict[str, Sequence[int]], finetune: str, rule: str
) -> str:
    """Apply ``rule`` (next | same | last | a node name) to the ordered candidate ``nodes``.

    ``next`` is the first later node whose output has lower dimensionality (C x H x W)
    than the fine-tuning node's; if no later node is smaller (e.g. VGG's pool5 -> fc6, where
    fc6 alone would add 100M trainable weights), the head attaches at the fine-tuning node.
    """
    position = list(nodes).index(finetune)
    later = list(nodes)[position + 1 :]
    if rule == "same" or not later:
        return finetune
    if rule == "last":
        return later[-1]
    if rule == "next":
        own = dimensionality(shapes[finetune])
        smaller = [n for n in later if dimensionality(shapes[n]) < own]
        return smaller[0] if smaller else finetune
    if rule not in nodes:
        raise ConfigError(
            f"finetune.connection: '{rule}' is not next, same, last or a candidate node;"
            f"{did_you_mean(rule, list(nodes) + ['next', 'same', 'last'])}"
        )
    if list(nodes).index(rule) < position:
        return finetune  # a named node before the fine-tuning node cannot hold the head
    return rule
