"""Model cards: `ilt merge` writes README.md (Hugging Face format), `ilt card`
adds the error table of `ilt report`; the card parses with huggingface_hub's
ModelCard and YAML, names no local path, and transformers still loads the model."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """exp/M0 (tiny Whisper) -> `ilt merge` of a LoRA trained on a 2-language mix -> exp/M1,
    decoded and scored on a test set, and `ilt report`ed."""
    from ilt.cli.main import cli
    from ilt.config import RoundConfig, dump_yaml, from_dict
    from ilt.core.registry import create
    from ilt.data.manifests import save_manifest
    from ilt.testing.dummies import make_cuts, tiny_whisper_dir
    from ilt.training.lora import attach_lora

    tmp = tmp_path_factory.mktemp("card")
    exp = tmp / "exp"
    base = tiny_whisper_dir(exp / "M0")
    train = save_manifest(make_cuts(tmp / "a", [
        {"text": "hello there", "language": "en", "duration": 1.5},
        {"text": "good morning", "language": "en", "duration": 0.5},
        {"text": "hola amigo", "language": "es", "duration": 1.0}]), tmp / "data" / "train.jsonl.gz")
    test = save_manifest(make_cuts(tmp / "b", [
        {"id": "t-en", "text": "hello world", "language": "en", "accent": "us"},
        {"id": "t-es", "text": "buenos dias", "language": "es", "accent": "es"}]), tmp / "data" / "test.jsonl.gz")
    config = from_dict(RoundConfig, {"name": "focus", "lora": {"r": 4, "lora_alpha": 8, "target_modules": "wide"},
                                     "task": {"data": [{"cuts": str(train), "weight": 2.0, "languages": ["en"]},
                                                       {"cuts": str(train), "weight": 1.0, "languages": ["es"]}]}})
    adapter = tmp / "focus" / "best"
    attach_lora(create("backbone", "whisper", base), config.lora).save_pretrained(str(adapter))
    (adapter / "round.yaml").write_text(dump_yaml(config))
    (adapter / "score.json").write_text(json.dumps({"step": 5, "metric": "dev_wer", "value": 42.0}))

    runner = CliRunner()
    for args in (["merge", "--model", str(base), "--adapter", str(adapter), "--out", str(exp / "M1")],
                 ["evaluate", "--model", str(exp / "M1"), "--cuts", str(test), "--out",
                  str(exp / "decode" / "M1" / "test"), "-o", "max_new_tokens=4", "-o", "beam_size={default: 1}",
                  "-o", "fallback_temperatures=[]"]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, result.output
    card_after_merge = (exp / "M1" / "README.md").read_text()
    for args in (["report", str(exp), "--models", "M1"], ["card", str(exp / "M1")]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, result.output
    return exp, card_after_merge


def test_merge_writes_a_card_with_lineage_and_data_mix(experiment):
    from huggingface_hub import ModelCard

    exp, card = experiment
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["language"] == ["en", "es"] and meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "automatic-speech-recognition" and "lora" in meta["tags"]
    assert "model-index" not in meta  # not scored yet when it was merged
    parsed = ModelCard(card)
    assert parsed.data.language == ["en", "es"] and parsed.data.license == "other"
    assert "| M1 | M0 | focus | r=4, alpha=8, dropout=0.05, wide |" in card
    assert "| train.jsonl.gz | en | 2 | 67% | 0.00 |" in card  # 2 s of English audio, 2/3 of the mix
    assert "dev_wer 42.00 (step 5)" in card
    lineage = json.loads((exp / "M1" / "lineage.json").read_text())
    assert [d["hours"] for d in lineage["data"]] == pytest.approx([2.0 / 3600, 1.0 / 3600])


def test_card_takes_the_report_error_table_and_names_no_path(experiment, tmp_path):
    from huggingface_hub import ModelCard
    from transformers import WhisperForConditionalGeneration

    exp, _ = experiment
    card = (exp / "M1" / "README.md").read_text()
    scores = json.loads((exp / "report" / "report_test.json").read_text())["models"][0]["by_language"]
    rates = {row["group"]: round(row["error_rate"], 2) for row in scores["rows"]}
    parsed = ModelCard.load(exp / "M1" / "README.md")
    results = {(r.dataset_config, r.metric_type): r.metric_value for r in parsed.data.eval_results}
    assert results[("en", "wer")] == rates["en"] and results[("es", "wer")] == rates["es"]
    assert "### test (test)" in card and f"| en | word | {rates['en']:.2f} |" in card

    for path in {str(exp), str(exp.parent), str(tmp_path.parent)}:
        assert path not in card
    assert "data/train" not in card and "/tmp" not in card  # manifests by file name only

    model, info = WhisperForConditionalGeneration.from_pretrained(exp / "M1", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
