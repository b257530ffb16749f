"""Data: Cityscapes labels and layout, the synthetic dataset, `prepare`, and the loaders."""
