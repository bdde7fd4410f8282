"""LoRA adapters with random weights, saved as ``ilt train`` saves ``best/``:
stand-ins for trained language experts in tests (fusion, distillation)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def random_adapter(base_dir: str | Path, out_dir: str | Path, config: Any, *, seed: int, std: float = 0.2,
                   score: float = 10.0) -> Path:
    """Attach ``config.lora`` (a :class:`ilt.config.RoundConfig`) to the model in
    ``base_dir``, draw every LoRA weight from ``N(0, std^2)`` (so ``B A`` is
    not zero) and save an adapter directory (``round.yaml``, ``score.json``) to
    ``out_dir``; return it."""
    import torch

    from ilt.config import dump_yaml
    from ilt.core.registry import create
    from ilt.training.lora import attach_lora

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    model = attach_lora(create("backbone", config.backbone, base_dir), config.lora)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, std)
    model.save_pretrained(str(out_dir))
    (out_dir / "round.yaml").write_text(dump_yaml(config), encoding="utf-8")
    (out_dir / "score.json").write_text(json.dumps({"step": 3, "metric": "dev_wer", "value": score}),
                                        encoding="utf-8")
    return out_dir


__all__ = ["random_adapter"]
