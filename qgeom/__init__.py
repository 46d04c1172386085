"""qgeom: the geometry of quantization vectors in Vision Transformers."""

__version__ = "0.1.0"
