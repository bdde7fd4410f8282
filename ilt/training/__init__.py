"""One ILT round: the LoRA, the training loop, its checkpoints and the dev evaluation."""
