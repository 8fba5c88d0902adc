"""dimat: decentralized deep learning by iterative merging and training."""

__version__ = "0.1.0"
