"""comet_core: CoMeT memory (arXiv 2602.01766) on stock Hugging Face decoder models."""

__version__ = "0.1.0"
