"""cogview: CogView text-to-image, captioning, reranking and super-resolution in modern PyTorch."""

__version__ = "0.1.0"
