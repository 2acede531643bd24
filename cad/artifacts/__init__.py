"""Typed artifacts: one class per kind of stage output, owning its file names and I/O.

- ``base``: the published directory every kind views; JSON helpers for pydantic models.
- ``archive``: the phantom archive and manifests. ``images``: decoded slices, their
  denoised copy, the augmented training set. ``splits``: patient splits and CV folds.
- ``features``: pooled node features. ``probe``: layer scores and the chosen node.
- ``model_package``: the versioned model package and the finetune output.
  ``model_card``: the package's ``model_card.md``.
- ``evaluation``: held-out metrics and predictions. ``summary``: summary.json and the
  workdir layout.
"""
