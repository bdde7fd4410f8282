"""LoRA language experts: one LoRA per language, trained, fused or distilled, routed by language."""
