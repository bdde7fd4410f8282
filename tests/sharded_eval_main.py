"""Run by tests/test_sharded_training.py, as one process or under ``accelerate
launch``: the dev evaluation of one adapter (ilt.training.evaluate), sharded
over the processes; the main process writes the score as JSON.

    python tests/sharded_eval_main.py MODEL_DIR ADAPTER_DIR DEV_CUTS OUT_JSON
"""

from __future__ import annotations

import json
import sys


def main(model_dir: str, adapter_dir: str, dev_cuts: str, out: str) -> None:
    import torch
    from accelerate import Accelerator

    from ilt.config import DecodeConfig
    from ilt.core.registry import create
    from ilt.core.runtime import process_state
    from ilt.models.adapter import load_adapter
    from ilt.training.evaluate import Collective, dev_shard, evaluate, load_dev
    from ilt.training.sharding import (
        apply_fully_shard,
        cpu_fsdp2_requested,
        fsdp2_modules,
        gathered_for_decoding,
    )

    process_state()
    accelerator = Accelerator()
    backbone = create("backbone", "whisper", model_dir, dtype=torch.float32, device=None)
    model = load_adapter(backbone, adapter_dir)
    if cpu_fsdp2_requested(accelerator):
        apply_fully_shard(model)
    model.eval()
    dev = load_dev(dev_cuts)
    config = DecodeConfig(beam_size={"default": 1}, max_new_tokens=6, batch_size=2, fallback_temperatures=[],
                          compression_ratio_threshold=None)
    collective = Collective(accelerator)
    with gathered_for_decoding(accelerator, model):
        score = evaluate(backbone, model, create("loss", "ce"), dev, config, metric="dev_wer", micro_batch=1,
                         device=accelerator.device, step=1, collective=collective)
    shards = collective.gather(len(dev_shard(dev, collective.rank, collective.world)))
    scores = collective.gather(json.dumps(score, sort_keys=True))
    if accelerator.is_main_process:
        with open(out, "w", encoding="utf-8") as fh:
            json.dump({"processes": accelerator.num_processes, "shards": shards, "score": score,
                       "same_on_every_process": len(set(scores)) == 1,
                       "fsdp2_modules": len(fsdp2_modules(model))}, fh)
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(*sys.argv[1:5])
