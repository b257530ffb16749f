"""cityseg_fast: fast, measurable semantic-segmentation training and benchmarking on Cityscapes."""

__version__ = "0.1.0"
