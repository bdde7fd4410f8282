"""ilt: Iterative LoRA Training for speech foundation models."""

__version__ = "0.1.0"
