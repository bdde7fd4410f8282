"""Wall time of the demo (``make demo``: ``egs/mini/run.sh``) with the Whisper
encoder padded to 30 s (today's recipe) and on the audio's own length
(issue 26), and the demo's result table of each.

Both sides run the same recipe on the same data and base model, in their own
experiment directories under ``--work`` (default: a fresh temporary
directory): first, untimed, ``run.sh --stop-stage 0`` builds the corpus,
the manifests and M0 once (shared); then each side runs ``run.sh --stage 1``
with its own ``--exp-dir`` and ``--conf-dir``. The ``audio_length`` side's
conf dir is a copy of ``egs/mini/conf`` whose every ``backbone:`` becomes
``{name: whisper, input_mode: audio_length, pad_multiple: N}`` (rounds and
decoding alike: the mode a model trains in is the one it decodes in). The
sides take turns, ``--repeats`` runs each (a fresh experiment directory per
run), and each run's seconds are reported with the median, the ratio, and
the last run's ``RESULTS`` table (``exp*/report``) of each side.

    .venv/bin/python bench/demo_time.py                   # 1 run a side (about 2 x 15 min on 2 cores)
    .venv/bin/python bench/demo_time.py --repeats 2 --record
    .venv/bin/python bench/demo_time.py --stop-stage 1    # a quick check: M0 decoded both ways

Nothing else may run on the machine meanwhile (FACTS.md: two torch processes
slow each other 3-5x).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO_DIR, device_info, markdown_table, record  # noqa: E402

MINI = REPO_DIR / "egs" / "mini"
SIDES = ("padded", "audio_length")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per side (they take turns)")
    parser.add_argument("--pad-multiple", type=int, default=1000, help="the audio_length side's pad_multiple")
    parser.add_argument("--stop-stage", type=int, default=None, help="pass --stop-stage to run.sh (default: all)")
    parser.add_argument("--work", type=Path, help="where data and experiments go (default: a temporary directory)")
    parser.add_argument("--record", action="store_true", help="append the run to bench/RESULTS.md")
    return parser.parse_args()


def audio_length_conf(src: Path, dst: Path, pad_multiple: int) -> Path:
    """A copy of the conf dir ``src`` whose top-level ``backbone: whisper`` lines
    name the audio_length mode; a YAML without one is copied as is."""
    import yaml

    dst.mkdir(parents=True, exist_ok=True)
    spec = yaml.safe_dump({"backbone": {"name": "whisper", "input_mode": "audio_length",
                                        "pad_multiple": pad_multiple}}, default_flow_style=None).strip()
    for path in sorted(src.glob("*.yaml")):
        lines = path.read_text(encoding="utf-8").splitlines()
        out = [spec if line.strip() == "backbone: whisper" and not line.startswith(" ") else line for line in lines]
        (dst / path.name).write_text("\n".join(out) + "\n", encoding="utf-8")
    return dst


def run_sh(work: Path, args: list[str], log: Path) -> float:
    """``bash run.sh ARGS`` in egs/mini with data and corpus under ``work``; its wall seconds."""
    env = {**os.environ, "PATH": f"{REPO_DIR / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    cmd = ["bash", "run.sh", "--data-dir", str(work / "data"), "--corpus-dir", str(work / "corpus"),
           "--base-model", str(work / "M0"), *args]
    print(f"=== {' '.join(cmd)} (log: {log})", file=sys.stderr, flush=True)
    start = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.run(cmd, cwd=MINI, env=env, stdout=fh, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        sys.exit(f"run.sh failed (exit status {proc.returncode}); see {log}")
    return time.perf_counter() - start


def report_table(exp_dir: Path) -> str:
    """The demo's result table: the report's markdown, if the run got that far."""
    found = sorted(exp_dir.glob("report/*.md"))
    return found[0].read_text(encoding="utf-8") if found else "(no report: the run stopped before stage 7)"


def main() -> None:
    args = parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="ilt-bench-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    confs = {"padded": MINI / "conf",
             "audio_length": audio_length_conf(MINI / "conf", work / "conf_audio_length", args.pad_multiple)}
    run_sh(work, ["--stop-stage", "0", "--exp-dir", str(work / "exp_prep")], work / "prep.log")
    seconds: dict[str, list[float]] = {side: [] for side in SIDES}
    last: dict[str, Path] = {}
    for turn in range(max(1, args.repeats)):
        for side in (SIDES if turn % 2 == 0 else SIDES[::-1]):
            exp = work / f"exp_{side}_{turn}"
            shutil.rmtree(exp, ignore_errors=True)
            extra = ["--stop-stage", str(args.stop_stage)] if args.stop_stage is not None else []
            seconds[side].append(run_sh(work, ["--stage", "1", "--exp-dir", str(exp), "--conf-dir",
                                               str(confs[side]), *extra], work / f"{side}_{turn}.log"))
            last[side] = exp
    med = {side: statistics.median(v) for side, v in seconds.items()}
    rows = [[side, f"{med[side]:.0f}", " ".join(f"{s:.0f}" for s in seconds[side])] for side in SIDES]
    rows.append(["padded / audio_length", f"{med['padded'] / med['audio_length']:.2f}", ""])
    table = markdown_table(["", "wall s (median)", "all runs s"], rows)
    tables = "\n\n".join(f"{side}'s table:\n\n{report_table(last[side])}" for side in SIDES)
    settings = (f"egs/mini/run.sh --stage 1{f' --stop-stage {args.stop_stage}' if args.stop_stage is not None else ''}"
                f", data and M0 built once beforehand; audio_length: pad_multiple {args.pad_multiple}; "
                f"{args.repeats} run(s) per side, taking turns, in one scratch work dir")
    print(f"\n{settings}\n\n{table}\n\n{tables}\n")
    if args.record:
        record("demo_time", device_info("cpu"), settings, table, notes=[tables])


if __name__ == "__main__":
    main()
