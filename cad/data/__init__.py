"""Data: DICOM reading, studies and phases, preprocessing, phantom, manifests, splits, augment."""
