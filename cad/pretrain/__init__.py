"""cad's offline pretrained source: procedural shape classes (``shapes``), the resumable
training loop (``train``) and the user-level weights cache (``cache``)."""

from cad.pretrain.cache import CachedWeights, cache_root, ensure_pretrained, link_into

__all__ = ["CachedWeights", "cache_root", "ensure_pretrained", "link_into"]
