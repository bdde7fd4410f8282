"""Track 2 commands: ``ilt diarize`` and ``ilt transcribe-sessions``
(``ilt score --sessions`` scores their output). See docs/track2.md."""

from __future__ import annotations

from pathlib import Path

import click

from ilt.cli.options import (
    MODEL,
    decode_config_option,
    is_main_process,
    load_config,
    override_option,
    parse_component,
    save_command,
)

SESSIONS_HELP = "Session manifest: one cut per whole recording (ilt prepare mlc-slm --sessions)."


@click.command("diarize")
@click.option("--sessions", "sessions_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help=SESSIONS_HELP)
@click.option("--diarizer", required=True,
              help="A registered diarizer (ilt plugins), or YAML with options: "
                   "'{name: offline, num_speakers: 2}', '{name: rttm, files: [x.rttm]}'.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="diarization.rttm, per_session/ (resume cache), diarizer.json.")
def diarize_cmd(sessions_path: str, diarizer: str, out_dir: str) -> None:
    """Find who speaks when in every session; write the turns as RTTM."""
    from ilt.track2.transcribe import diarize_sessions

    turns = diarize_sessions(sessions_path, parse_component(diarizer, "--diarizer"), out_dir)
    save_command(out_dir)
    click.echo(f"diarized {len(turns)} session(s): {sum(map(len, turns.values()))} turn(s) -> "
               f"{Path(out_dir) / 'diarization.rttm'}")


@click.command("transcribe-sessions")
@click.option("--model", "model_dir", required=True, type=MODEL,
              help="A model directory, or a hub ID ORG/NAME[@REVISION] (its cached snapshot).")
@click.option("--adapter", "adapter_dir", type=click.Path(exists=True, file_okay=False),
              help="A LoRA on top of --model, unmerged (a round's best/, or checkpoints/step-N).")
@click.option("--sessions", "sessions_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help=SESSIONS_HELP)
@click.option("--rttm", "rttm_path", type=click.Path(exists=True, dir_okay=False),
              help="Speaker turns: ilt diarize's diarization.rttm, or any RTTM of these sessions.")
@click.option("--oracle", is_flag=True, help="Instead of --rttm: the sessions' reference turns (oracle segments).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="segments.jsonl.gz, decode/, hyp.seglst.json, hyp.stm (and scores.* with references).")
@decode_config_option()
@click.option("--max-seconds", type=click.FloatRange(min=0.0, min_open=True), default=30.0, show_default=True,
              help="Turns longer than this are split evenly into pieces no longer than it.")
@click.option("--collar", type=float, default=5.0, show_default=True, help="tcpWER collar (s) when scoring.")
@override_option
def transcribe_sessions_cmd(model_dir, adapter_dir, sessions_path, rttm_path, oracle, out_dir, decode_config,
                            max_seconds, collar, overrides) -> None:
    """Decode the speaker turns of every session into per-speaker hypotheses with
    times (SegLST, STM); score them when the sessions have reference text."""
    from ilt.config import DecodeConfig
    from ilt.track2.transcribe import (
        has_session_references,
        score_sessions,
        transcribe_sessions,
    )

    if bool(rttm_path) == oracle:
        raise click.UsageError("give the speaker turns: either --rttm FILE or --oracle")
    cfg = load_config(decode_config, DecodeConfig, overrides)
    hyps = transcribe_sessions(model_dir, sessions_path, rttm_path, out_dir, cfg, adapter=adapter_dir,
                               max_seconds=max_seconds)
    save_command(out_dir)
    out = Path(out_dir)
    if not is_main_process():
        return
    if not has_session_references(sessions_path):
        for stale in ("scores.json", "scores.md"):
            (out / stale).unlink(missing_ok=True)
        click.echo(f"transcribed {len(hyps)} segment(s) -> {out / 'hyp.seglst.json'} (no reference text: not scored)")
        return
    score_sessions(sessions_path, out / "hyp.seglst.json", out, collar=collar)
    click.echo((out / "scores.md").read_text(encoding="utf-8"))


COMMANDS = [diarize_cmd, transcribe_sessions_cmd]
