"""Data: DICOM reading, study assembly, preprocessing, the phantom, manifests, splits, balance, augment."""
