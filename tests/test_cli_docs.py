"""The command line as one system (issue 27, item 3), checked against its docs.

* Every ``ilt ... --flag`` written in README.md or docs/*.md names an option
  that the command's ``--help`` shows (old, hidden names do not count: the
  docs use the current ones).
* Every command comes from one list of command modules.
* A usage error exits 2, as click's own do; an error in the data exits 1.
* The old flag names (``--conf``, ``--force``, a positional output) still
  work for one release, hidden from ``--help``; list options take repeated
  and comma-separated values alike.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from ilt.cli import main as cli_main
from ilt.cli.main import COMMAND_MODULES, cli
from ilt.cli.options import IltOption

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"(`+)(.+?)\1", re.S)
INDENTED = re.compile(r"^(?: {4}|\t)\s*ilt\s")  # a command in an indented code block
#: Where an ``ilt`` command starts inside a snippet (not ``from ilt import``, not ``ilt.cli.main``).
COMMAND_START = re.compile(r"(?:^|(?<=[\s;|&(]))(?<!from )ilt(?=\s)")
FLAG = re.compile(r"^(--?[A-Za-z][\w-]*)")
END_OF_COMMAND = {"|", "||", "&&", ";", ")", "--"}


def snippets(text: str) -> list[str]:
    """Code in ``text``: each line of a fenced or indented block (``\\`` continuations
    joined) and each inline span."""
    found = []
    for block in FENCE.finditer(text):
        found.extend(re.sub(r"\\\n", " ", block.group(1)).splitlines())
    rest = FENCE.sub("", text)
    found.extend(line for line in re.sub(r"\\\n", " ", rest).splitlines() if INDENTED.match(line))
    found.extend(" ".join(span.group(2).split()) for span in INLINE.finditer(rest))
    return found


def tokens_of(text: str) -> list[str]:
    try:
        return shlex.split(text, comments=True)
    except ValueError:  # an unbalanced quote in a fragment: words will do
        return text.split()


def doc_usages() -> list[tuple[str, str]]:
    """``(where, text after 'ilt')`` for every ``ilt`` command in the docs."""
    usages = []
    for path in DOCS:
        for snippet in snippets(path.read_text(encoding="utf-8")):
            for start in COMMAND_START.finditer(snippet):
                usages.append((f"{path.relative_to(ROOT)}: {snippet.strip()[:80]}", snippet[start.end():]))
    return usages


def resolve(words: list[str]) -> tuple[list[str], click.Command | None, list[str], list[str]]:
    """The command path, the command, its flags and the root's flags (``ilt --debug ...``) in ``words``."""
    ctx = click.Context(cli, info_name="ilt")
    command: click.Command = cli
    path: list[str] = []
    flags: list[str] = []
    root_flags: list[str] = []
    for word in words:
        if word in END_OF_COMMAND or word == "ilt":
            break
        flag = FLAG.match(word)
        if flag:
            (root_flags if command is cli else flags).append(flag.group(1))
        elif isinstance(command, click.Group) and command is not cli and re.fullmatch(r"[A-Z][A-Z_]*", word):
            return path + [word], None, [], root_flags  # `ilt prepare NAME ...`: any sub-command, unchecked
        elif isinstance(command, click.Group) and re.fullmatch(r"[a-z][a-z0-9-]*", word):
            sub = command.get_command(ctx, word)
            if sub is None:  # prose ("ilt does not ..."), or a command the docs name wrongly
                return path + [word], None, flags, root_flags
            command, path = sub, path + [word]
    return path, command, flags, root_flags


def help_text(path: list[str]) -> str:
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    return result.output


def test_the_docs_name_commands():
    usages = doc_usages()
    assert len(usages) > 100  # the parser finds the docs' commands
    named = {tuple(resolve(tokens_of(text))[0][:2]) for _, text in usages}
    assert {("decode",), ("experts", "fuse"), ("prepare", "kaldi"), ("pseudo-label",)} <= named


def test_every_flag_the_docs_give_a_command_is_in_its_help():
    problems, helps = [], {}
    checked = 0
    for where, text in doc_usages():
        path, command, flags, root_flags = resolve(tokens_of(text))
        if command is None:
            if flags:  # `ilt does not ...` in prose has none
                problems.append(f"{where}: no command `ilt {' '.join(path)}`")
            continue
        for at, named in ((path, flags), ([], root_flags)):
            key = tuple(at)
            if named and key not in helps:
                helps[key] = help_text(at)
            for flag in named:
                checked += 1
                if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", helps[key]):
                    problems.append(f"{where}: `ilt {' '.join(at)} --help` does not name {flag}")
    assert checked > 50
    assert not problems, "\n".join(problems)


def test_the_doc_parser_catches_an_unknown_flag():
    path, command, flags, _ = resolve(tokens_of("decode --model M --conf x.yaml --out D  # comment --nope"))
    assert path == ["decode"] and flags == ["--model", "--conf", "--out"]
    assert "--conf" not in help_text(path).split()  # a hidden alias: docs must use --decode-config
    assert resolve(tokens_of("experts fuse --experts E | tee --append log"))[2] == ["--experts"]
    assert resolve(tokens_of("--debug train --config c")) == (["train"], cli.commands["train"], ["--config"],
                                                              ["--debug"])
    assert resolve(tokens_of("--debug COMMAND"))[1:] == (cli, [], ["--debug"])
    assert resolve(tokens_of("trian --config c"))[:2] == (["trian"], None)
    assert resolve(tokens_of("prepare NAME DIR --out D")) == (["prepare", "NAME"], None, [], [])


# --------------------------------------------------------------------------- one registration list


def all_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], click.Command]:
    found = {}
    for name, command in group.commands.items():
        found[prefix + (name,)] = command
        if isinstance(command, click.Group):
            found.update(all_commands(command, prefix + (name,)))
    return found


def test_every_command_comes_from_the_one_list_of_command_modules():
    listed = {id(c): m.__name__ for m in COMMAND_MODULES for c in m.COMMANDS}
    assert len(listed) == sum(len(m.COMMANDS) for m in COMMAND_MODULES)  # no command in two modules
    assert {id(c) for c in cli.commands.values()} == set(listed)
    assert all(c.name == name for name, c in cli.commands.items())
    # every command module of ilt/cli is in the list, and nothing else registers commands
    modules = {p.stem for p in (ROOT / "ilt" / "cli").glob("*_commands.py")}
    assert modules == {m.__name__.rpartition(".")[2] for m in COMMAND_MODULES}
    for source in (ROOT / "ilt" / "cli").glob("*.py"):
        text = source.read_text(encoding="utf-8")
        assert "EXTERNAL_COMMANDS" not in text and "importlib" not in text, source
        assert not re.search(r"@cli\.(command|group)|\bcli\.add_command", text), source
    # sub-commands join their group inside the group's own module
    for path, command in all_commands(cli).items():
        top = cli.commands[path[0]]
        assert command.callback is None or command.callback.__module__ == top.callback.__module__, path


def test_two_commands_of_one_name_are_refused():
    import types

    twin = types.ModuleType("ilt.cli.twin_commands")
    twin.COMMANDS = [click.Command("decode")]
    with pytest.raises(RuntimeError, match="ilt decode: defined in ilt.cli.twin_commands"):
        cli_main.build_cli((*COMMAND_MODULES, twin))


# --------------------------------------------------------------------------- exit status


@pytest.fixture
def files(tmp_path):
    cuts = tmp_path / "cuts.jsonl.gz"
    cuts.write_bytes(b"")
    model = tmp_path / "model"
    model.mkdir()
    (tmp_path / "exp1").mkdir()
    (tmp_path / "exp2").mkdir()
    return tmp_path


@pytest.mark.parametrize("args, message", [
    (["decode", "--model", "{d}/model", "--adapter", "{d}/model", "--experts", "{d}/model", "--cuts",
      "{d}/cuts.jsonl.gz", "--out", "{d}/o"], "--adapter and --experts: give one"),
    (["decode", "--cuts", "{d}/cuts.jsonl.gz", "--out", "{d}/o"], "Missing option '--model'"),
    (["transcribe-sessions", "--model", "{d}/model", "--sessions", "{d}/cuts.jsonl.gz", "--out", "{d}/o"],
     "either --rttm FILE or --oracle"),
    (["transcribe-sessions", "--model", "{d}/model", "--sessions", "{d}/cuts.jsonl.gz", "--oracle",
      "--max-seconds", "0", "--out", "{d}/o"], "--max-seconds"),
    (["report", "{d}/exp1", "{d}/exp2", "--models", "M0"], "--models applies to a single EXP_DIR"),
    (["merge", "--model", "{d}/model", "--adapter", "{d}/model", "--out", "{d}/o", "--history", "{d}/model",
      "--weights", "0.5,0.6"], "weights must sum to 1"),
    (["merge", "--model", "{d}/model", "--adapter", "{d}/model", "--out", "{d}/o", "--history", "{d}/model"],
     "needs 2 weights"),
    (["merge", "--model", "{d}/model", "--adapter", "{d}/model", "--out", "{d}/o", "--weights", "lots"],
     "expected numbers"),
    (["train", "--config", "{d}/cuts.jsonl.gz", "--model", "{d}/model", "--out", "{d}/o", "--train",
      "{d}/cuts.jsonl.gz:half"], "weight 'half' is not a number"),
    (["pseudo-label", "--models", "{d}/model", "--cuts", "{d}/cuts.jsonl.gz", "--out", "{d}/o", "--voter",
      "{{alpha: 1}}"], "--voter: a component mapping needs a 'name' key"),
    (["pseudo-label", "--models", "{d}/model", "--cuts", "{d}/cuts.jsonl.gz", "--out", "{d}/o", "--voter",
      "{{name: ["], "not a name or YAML mapping"),
    (["export", "ct2", "{d}/model", "{d}/a", "--out", "{d}/b"], "the output is given twice"),
    (["export", "ct2", "{d}/model"], "Missing option '--out'"),
    (["convert", "ct2", "{d}/nowhere", "--out", "{d}/o"], "no such directory"),
    (["convert", "ct2", "--package", "whisper-base", "{d}/model", "--out", "{d}/o"], "expected no SRC"),
    (["prepare", "kaldy", "{d}/model", "--out", "{d}/o"], "did you mean 'kaldi'"),
    (["prepare", "kaldi", "{d}/model"], "Missing option '--out'"),
])
def test_a_usage_error_exits_2(files, args, message):
    result = CliRunner().invoke(cli, [a.format(d=files) for a in args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Usage: ilt" in result.output, result.output
    assert not (files / "o").exists()


def test_an_error_in_the_data_exits_1(tmp_path):
    bad = tmp_path / "round.yaml"
    bad.write_text("name: x\ntrain: {epoch: 3}\n")
    result = CliRunner().invoke(cli, ["config", "check", str(bad)])
    assert result.exit_code == 1 and "train.epoch: unknown key" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(cli, ["prepare", "kaldi", str(empty), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "missing Kaldi file(s)" in result.output and "Usage:" not in result.output


# --------------------------------------------------------------------------- old names, lists


def parse(args: list[str]) -> dict:
    """The parameters ``ilt ARGS`` gives its command, without running it."""
    ctx = click.Context(cli, info_name="ilt")
    command: click.Command = cli
    while isinstance(command, click.Group):
        command = command.get_command(ctx, args[0])
        args = args[1:]
    return command.make_context(command.name, list(args)).params


def test_old_flag_names_still_work_hidden_from_help(files):
    decode = ["decode", "--model", str(files / "model"), "--cuts", str(files / "cuts.jsonl.gz"), "--out", "o"]
    assert parse([*decode, "--conf", str(files / "cuts.jsonl.gz")])["decode_config"] == str(files / "cuts.jsonl.gz")
    assert parse([*decode, "--decode-config", str(files / "cuts.jsonl.gz")])["decode_config"] == \
        str(files / "cuts.jsonl.gz")
    tts = ["augment", "tts", "--augmenter", "espeak", "--prompts", str(files / "cuts.jsonl.gz"), "--texts",
           str(files / "cuts.jsonl.gz"), "--out", "o"]
    assert parse([*tts, "--force"])["overwrite"] is True and parse(tts)["overwrite"] is False
    assert parse(["prepare", "kaldi", str(files), "--out", "o", "--force"])["force"] is True
    assert parse(["prepare", "kaldi", str(files), "--out", "o", "--force", "--no-force"])["force"] is False
    assert parse(["prepare", "kaldi", str(files), "--out", "o", "--overwrite"])["force"] is True
    old = parse(["prepare", "kaldi", str(files), "o"])  # the positional output
    assert old["out_dir"] == "o" and old["out"] is None
    for path, old_names in ((["decode"], ["--conf"]), (["pseudo-label"], ["--conf"]), (["train"], ["--conf"]),
                            (["augment", "tts"], ["--force"]), (["merge"], ["--force"]),
                            (["prepare", "kaldi"], ["--force", "--no-force"]), (["export", "ct2"], ["--force"])):
        text = help_text(path)
        assert "--overwrite" in text or "--decode-config" in text, path
        for name in old_names:
            assert not re.search(rf"(?<![\w-]){name}(?![\w-])", text), (path, name)
    assert "OUT_DIR" not in help_text(["prepare", "kaldi"]).splitlines()[0]  # not in the usage line


def test_the_old_positional_output_and_conf_run(tmp_path):
    from ilt.testing import tiny_whisper_dir

    model = tiny_whisper_dir(tmp_path / "model", layers=1)
    for args in ([str(tmp_path / "old")], ["--out", str(tmp_path / "new")]):
        result = CliRunner().invoke(cli, ["export", "ct2", str(model), *args, "--quantization", "float32"])
        if result.exit_code != 0 and "ctranslate2" in result.output.lower():
            pytest.skip(f"ctranslate2 unavailable: {result.output}")
        assert result.exit_code == 0, result.output
    assert (tmp_path / "old" / "model.bin").is_file() and (tmp_path / "new" / "model.bin").is_file()
    result = CliRunner().invoke(cli, ["export", "ct2", str(model), "--out", str(tmp_path / "new")])
    assert result.exit_code == 1 and "--overwrite" in result.output
    result = CliRunner().invoke(cli, ["export", "ct2", str(model), "--out", str(tmp_path / "new"), "--force",
                                      "--quantization", "float32"])
    assert result.exit_code == 0, result.output


def test_list_options_take_repeats_and_commas_alike(files):
    model = str(files / "model")
    base = ["pseudo-label", "--cuts", str(files / "cuts.jsonl.gz"), "--out", "o"]
    assert parse([*base, "--models", f"{model},{model}", "--models", model])["model_paths"] == (model,) * 3
    report = parse(["report", str(files / "exp1"), "--models", "M0,M1", "--models", "M2"])
    assert report["models"] == ("M0", "M1", "M2")
    merge = parse(["merge", "--model", model, "--adapter", model, "--out", "o", "--history", model,
                   "--weights", "0.8", "--weights", "0.2"])
    assert merge["weights"] == ("0.8", "0.2") and merge["history"] == (model,)
    assert parse(["merge", "--model", model, "--adapter", model, "--out", "o", "--weights", "0.8, 0.2"])[
        "weights"] == ("0.8", "0.2")
    fuse = parse(["experts", "fuse", "--experts", model, "--out", "o", "--weights", "en=0.5", "--weights", "de=0.5"])
    assert fuse["weights_spec"] == ("en=0.5", "de=0.5")
    splits = parse(["prepare", "mlc-slm", str(files), "--out", "o", "--splits", "train,dev", "--splits", "test"])
    assert splits["splits"] == ("train", "dev", "test")
    # KEY=VALUE options repeat but are never split: a value may hold commas
    decode = parse(["decode", "--model", model, "--cuts", str(files / "cuts.jsonl.gz"), "--out", "o",
                    "-o", "beam_size={default: 1, en: 2}"])
    assert decode["overrides"] == ("beam_size={default: 1, en: 2}",)
    assert parse(["prepare", "lhotse", str(files), "--out", "o", "--option", "a=1,2"])["option"] == ("a=1,2",)


#: Repeatable options not (yet) written as list options: ``ilt stage`` is the recipe template's plumbing,
#: owned by the recipe work (issue 27, item 4); its ``--after`` keys never hold commas.
NOT_LIST_OPTIONS = {(("stage", "check"), "after"), (("stage", "done"), "after")}


def test_every_list_option_splits_commas():
    """A repeatable option is a list option (split at commas), unless it takes KEY=VALUE pairs."""
    ctx = click.Context(cli, info_name="ilt")
    for path, command in all_commands(cli).items():
        for param in command.params:
            if (path, param.name) in NOT_LIST_OPTIONS:
                continue
            if isinstance(param, click.Option) and param.multiple and param.metavar != "KEY=VALUE":
                assert isinstance(param, IltOption) and param.split_commas, (path, param.name)
    prepare = cli.commands["prepare"]
    for name in prepare.list_commands(ctx):
        for param in prepare.get_command(ctx, name).params:
            if isinstance(param, click.Option) and param.multiple and param.metavar != "KEY=VALUE":
                assert isinstance(param, IltOption) and param.split_commas, (name, param.name)


#: ``ilt plan --model`` reads only a config (a directory's config.json, or one shipped with ilt): no download.
NOT_MODEL_READERS = {(("plan",), "model")}


def test_every_model_option_takes_a_hub_id():
    from ilt.cli.options import MODEL

    for path, command in all_commands(cli).items():
        for param in command.params:
            if (path, param.name) in NOT_MODEL_READERS:
                continue
            if param.name in ("model", "model_dir", "model_paths", "base", "history"):
                assert param.type is MODEL, (path, param.name)
