"""Adapting a network or a state dict to a different number of input channels (private)."""

from __future__ import annotations

import torch
from torch import nn


def adapt_input_conv(in_chans: int, weight: torch.Tensor) -> torch.Tensor:
    """timm's kernel adaptation: sum for 1 channel, tile and rescale for others."""
    from timm.models import adapt_input_conv as adapt  # lazily: timm is slow to import

    return adapt(in_chans, weight)


def first_conv_path(model: nn.Module) -> str:
    """Qualified name of the first registered conv layer (the stem of every net here)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name
    raise ValueError(f"{type(model).__name__} has no convolution")


def adapt_first_conv(model: nn.Module, in_chans: int) -> nn.Module:
    """Replace the stem conv by one taking ``in_chans`` channels, weights adapted like timm.

    For 1 channel the RGB kernels are summed; for other counts they are tiled and
    rescaled (``timm.models.adapt_input_conv``), so pretrained filters keep their meaning.
    """
    path = first_conv_path(model)
    old = model.get_submodule(path)
    assert isinstance(old, nn.Conv2d)
    if old.in_channels == in_chans:
        return model
    if old.groups != 1:
        raise ValueError(f"stem conv '{path}' is grouped; cannot adapt it to {in_chans} channels")
    new = nn.Conv2d(
        in_chans,
        old.out_channels,
        kernel_size=old.kernel_size,  # type: ignore[arg-type]
        stride=old.stride,  # type: ignore[arg-type]
        padding=old.padding,  # type: ignore[arg-type]
        dilation=old.dilation,  # type: ignore[arg-type]
        bias=old.bias is not None,
        padding_mode=old.padding_mode,
    )
    with torch.no_grad():
        new.weight.copy_(adapt_input_conv(in_chans, old.weight.detach()))
        if old.bias is not None:
            new.bias.copy_(old.bias.detach())
    parent_path, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent_path), attr, new)
    return model


def adapt_state_dict(
    state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Adapt conv kernels whose input-channel count alone differs from ``target``'s.

    Returns the adapted state dict and the keys that were adapted.
    """
    out, adapted = dict(state), []
    for key, weight in state.items():
        want = target.get(key)
        if (
            want is not None
            and weight.ndim == 4
            and want.ndim == 4
            and weight.shape[1] != want.shape[1]
            and weight.shape[0] == want.shape[0]
            and weight.shape[2:] == want.shape[2:]
        ):
            out[key] = adapt_input_conv(want.shape[1], weight)
            adapted.append(key)
    return out, adapted
