"""One-pass multi-node feature extraction with global and spatial-pyramid pooling."""
