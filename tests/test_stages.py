"""ilt.core.stages (done-markers and fingerprints of recipe steps) and its
``ilt stage`` commands, invoked on the group object (ilt.cli.recipe_commands)."""

import shlex

import pytest
from click.testing import CliRunner

from ilt.cli.recipe_commands import COMMANDS, stage
from ilt.core import stages
from ilt.core.stages import State
from ilt.errors import IltInputError


def test_check_mark_clear_round_trip(tmp_path):
    assert stages.check(tmp_path, "decode.M0.test") is State.NEW
    path = stages.mark(tmp_path, "decode.M0.test")
    assert path == tmp_path / ".done" / "decode.M0.test" and path.read_text() == ""
    assert stages.check(tmp_path, "decode.M0.test") is State.DONE
    assert stages.check(tmp_path, "decode.M0.test", force=True) is State.FORCED
    assert stages.clear(tmp_path, "decode.M0.test") is True
    assert stages.clear(tmp_path, "decode.M0.test") is False
    assert stages.check(tmp_path, "decode.M0.test") is State.NEW


def test_a_changed_command_or_upstream_step_changes_the_state(tmp_path):
    stats = ["ilt", "augment", "token-stats", "--low", "20", "--out", "kn/token stats"]
    fp_stats = stages.fingerprint(stats)
    assert shlex.split(fp_stats) == stats  # readable back as the command it was
    stages.mark(tmp_path, "token_stats", fp_stats)
    text = ["ilt", "augment", "select-text", "--min-ratio", "0.5"]
    fp_text = stages.fingerprint(text, stages.upstream_fingerprints(tmp_path, ["token_stats"]))
    assert fp_text == f"{shlex.join(text)} | {fp_stats}"
    stages.mark(tmp_path, "rare_text", fp_text)
    assert stages.check(tmp_path, "rare_text", fp_text) is State.DONE
    assert stages.check(tmp_path, "rare_text", stages.fingerprint(text[:-1] + ["0.6"], [fp_stats])) is State.CHANGED
    # token statistics rebuilt with other thresholds: the text selection after it is stale too
    stages.mark(tmp_path, "token_stats", stages.fingerprint(stats[:4] + ["2"] + stats[5:]))
    again = stages.fingerprint(text, stages.upstream_fingerprints(tmp_path, ["token_stats"]))
    assert stages.check(tmp_path, "rare_text", again) is State.CHANGED
    # no fingerprint asked: any marker means done
    assert stages.check(tmp_path, "rare_text") is State.DONE


def test_upstream_must_have_finished(tmp_path):
    with pytest.raises(IltInputError, match="step 'token_stats' has not finished"):
        stages.upstream_fingerprints(tmp_path, ["token_stats"])


@pytest.mark.parametrize("key", ["", ".", "..", "a/b"])
def test_a_key_is_a_file_name(tmp_path, key):
    with pytest.raises(IltInputError, match="give a file name"):
        stages.marker(tmp_path, key)


def test_claim_keeps_a_directory_to_one_owner(tmp_path):
    assert stages.claim(tmp_path, "base_model", "/models/a") is None
    assert stages.claim(tmp_path, "base_model", "/models/a") is None
    assert stages.claim(tmp_path, "base_model", "/models/b") == "/models/a"
    assert stages.read_mark(tmp_path, "base_model") == "/models/a\n"  # untouched
    assert stages.claim(tmp_path, "base_model", "/models/b", force=True) is None
    assert stages.read_mark(tmp_path, "base_model") == "/models/b\n"


def test_reuse_links_what_the_other_experiment_finished(tmp_path):
    src, dst = tmp_path / "main", tmp_path / "ablation"
    (src / "M1").mkdir(parents=True)
    (src / "focus").mkdir()
    assert not stages.reuse(src, dst, "M1.focus", ["focus", "M1"])  # not finished there
    stages.mark(src, "M1.focus")
    assert not stages.reuse(src, dst, "M1.focus", ["focus", "M1", "missing"])
    assert not (dst / "focus").exists()  # all or nothing
    assert stages.reuse(src, dst, "M1.focus", ["focus", "M1"])
    assert (dst / "M1").is_symlink() and (dst / "M1").resolve() == (src / "M1").resolve()
    assert stages.check(dst, "M1.focus") is State.DONE
    assert stages.reuse(src, dst, "M1.focus", ["focus", "M1"])  # a link is replaced
    # a directory the experiment holds for real is never replaced
    (dst / "M1").unlink()
    (dst / "M1").mkdir()
    stages.clear(dst, "M1.focus")
    assert not stages.reuse(src, dst, "M1.focus", ["focus", "M1"])
    assert stages.check(dst, "M1.focus") is State.NEW and not (dst / "M1").is_symlink()


def invoke(*args):
    return CliRunner().invoke(stage, [str(a) for a in args])


def test_cli_check_done_clear(tmp_path):
    assert COMMANDS == [stage] and stage.name == "stage"
    res = invoke("check", tmp_path, "decode.M0.test")
    assert res.exit_code == 0 and res.output == "new\n"
    res = invoke("done", tmp_path, "decode.M0.test")
    assert res.exit_code == 0 and res.output.strip() == str(tmp_path / ".done" / "decode.M0.test")
    assert invoke("check", tmp_path, "decode.M0.test").output == "done\n"
    assert invoke("check", tmp_path, "decode.M0.test", "--force", "true").output == "forced\n"
    assert invoke("clear", tmp_path, "decode.M0.test").output == "removed\n"
    assert invoke("clear", tmp_path, "decode.M0.test").output == "absent\n"


def test_cli_fingerprints_the_command_after_the_separator(tmp_path):
    stats = ["ilt", "augment", "token-stats", "--low", "20", "--out", "kn/token_stats"]
    text = ["ilt", "augment", "select-text", "--stats", "kn/token_stats", "--out", "kn/rare_text"]
    assert invoke("done", tmp_path, "token_stats", "--", *stats).exit_code == 0
    assert invoke("check", tmp_path, "token_stats", "--", *stats).output == "done\n"
    assert invoke("check", tmp_path, "token_stats", "--", *stats[:-1], "elsewhere").output == "changed\n"
    assert invoke("done", tmp_path, "rare_text", "--after", "token_stats", "--", *text).exit_code == 0
    recorded = stages.read_mark(tmp_path, "rare_text")
    assert recorded == stages.fingerprint(text, [stages.fingerprint(stats)])
    assert invoke("check", tmp_path, "rare_text", "--after", "token_stats", "--", *text).output == "done\n"
    assert invoke("check", tmp_path, "rare_text", "--", *text).output == "changed\n"  # upstream left out


def test_cli_usage_errors_exit_2_and_name_the_problem(tmp_path):
    res = invoke("check", tmp_path, "rare_text", "--after", "token_stats", "--", "ilt", "x")
    assert res.exit_code == 2 and "step 'token_stats' has not finished" in res.output
    res = invoke("check", tmp_path, "a/b")
    assert res.exit_code == 2 and "give a file name" in res.output
    res = invoke("done", tmp_path, "k", "--after", "token_stats")
    assert res.exit_code == 2 and "--after needs the step's command" in res.output
    res = invoke("check", tmp_path, "k", "--force", "maybe")
    assert res.exit_code == 2


def test_cli_claim_and_reuse(tmp_path):
    kn = tmp_path / "kn"
    assert invoke("claim", kn, "base_model", "/models/a").output == "ok\n"
    assert invoke("claim", kn, "base_model", "/models/b").output == "/models/a\n"
    assert invoke("claim", kn, "base_model", "/models/b", "--force", "true").output == "ok\n"
    src, dst = tmp_path / "main", tmp_path / "abl"
    (src / "decode" / "M0" / "test").mkdir(parents=True)
    stages.mark(src, "decode.M0.test")
    assert invoke("reuse", src, dst, "decode.M0.test", "decode/M0/test", "--force", "true").output == "no\n"
    assert not (dst / "decode").exists()
    assert invoke("reuse", src, dst, "decode.M0.test", "decode/M0/test").output == "reused\n"
    assert (dst / "decode" / "M0" / "test").is_symlink()
    assert invoke("reuse", src, dst, "decode.M0.test").exit_code == 2  # no PATH
