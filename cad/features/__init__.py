"""One-pass multi-node feature extraction with global pooling."""
