"""Training: resolving a config's models, the training loop and its augmentations, and the checkpoint cache."""
