"""The HTML page of ``ilt report`` (ilt.reporting.html), on a hand-built experiment.

Three models decoded on six utterances (English with two accents, French,
Japanese scored by character) with known errors; ``ilt report`` writes the
page, which is parsed (stdlib ``html.parser``) and compared with the Report's
numbers and the hand-built errors. When Chromium, chromedriver and Selenium
are installed the page is also opened in headless Chromium.
"""

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner

from ilt.asr.score import score_files
from ilt.reporting.html import chain_of, error_counts, worse_utterances
from ilt.reporting.report import collect
from ilt.testing.dummies import make_cuts

EN1, EN2, EN3 = "en-us-001", "en-us-002", "en-gb-003"
FR1, JA1, JA2 = "fr-001", "ja-001", "ja-002"
ODD_ACCENT = "A&B<i>"  # must come out as text, not markup

REFS = [
    dict(id=EN1, text="The cat sat on the mat.", language="en", accent="American"),
    dict(id=EN2, text="Hello world again!", language="en", accent="American"),
    dict(id=EN3, text="Good morning.", language="en", accent=ODD_ACCENT),
    dict(id=FR1, text="Bonjour tout le monde.", language="fr", accent=None),
    dict(id=JA1, text="今日はいい天気", language="ja", accent=None),
    dict(id=JA2, text="ありがとう", language="ja", accent=None),
]
HYPS = {
    "M0": {EN1: "the cat sat on the mat", EN2: "hello word again", EN3: "good morning",
           FR1: "bonjour tout le monde", JA1: "今日はいい天気", JA2: "ありがとう"},
    # EN1 worse (the -> a, cat -> bat, "the" deleted), EN2 better, EN3 worse (two insertions), JA1 worse (天 -> 電)
    "M1": {EN1: "a bat sat on mat", EN2: "hello world again", EN3: "good morning to you",
           FR1: "bonjour tout le monde", JA1: "今日はいい電気", JA2: "ありがとう"},
    # EN1 fixed again, JA2 worse (う deleted)
    "M2": {EN1: "the cat sat on the mat", EN2: "hello world again", EN3: "good morning to you",
           FR1: "bonjour tout le monde", JA1: "今日はいい電気", JA2: "ありがと"},
}


def _lineage(name: str, base: dict, round_name: str, r: int, alpha: float, scope: str, parent: dict | None) -> dict:
    return {
        "model": {"name": name, "source": f"ilt merge of round {round_name}", "sha256": f"{name.lower()}0000000000"},
        "base": base, "adapter": {"round": round_name, "step": 7}, "round": round_name,
        "config": {"name": round_name, "lora": {"r": r, "lora_alpha": alpha, "target_modules": scope,
                                                 "lora_dropout": 0.05},
                   "task": {"loss": "ce"}},
        "data": [{"role": "train", "cuts": "data/manifests/cuts_train.jsonl.gz", "weight": 2.0,
                  "languages": ["en"], "sha256": "ab" * 32},
                 {"role": "dev", "cuts": "data/manifests/cuts_dev.jsonl.gz", "weight": 1.0, "languages": None,
                  "sha256": "cd" * 32}],
        "dev_score": {"metric": "dev_wer", "value": 12.3456},
        "history_merge": None, "parent": parent,
    }


M0_ID = {"name": "M0", "source": "converted from pypi:some-package", "sha256": "0123456789ab"}
M1_LINEAGE = _lineage("M1", M0_ID, "focus", 16, 32.0, "attention", None)
M2_LINEAGE = _lineage("M2", M1_LINEAGE["model"], "feedback", 64, 256.0, "wide", M1_LINEAGE)


@pytest.fixture(scope="module")
def exp(tmp_path_factory):
    """EXP/decode/<M>/test/ scored by ``ilt score``'s function, lineage.json for M1 and M2,
    and the page written by the ``ilt report`` command."""
    from ilt.cli.main import cli

    tmp = tmp_path_factory.mktemp("report_html")
    cuts = make_cuts(tmp / "audio", [dict(r, duration=0.1) for r in REFS])
    ref = tmp / "cuts_test.jsonl.gz"
    cuts.to_file(ref)
    exp = tmp / "exp"
    for model, hyps in HYPS.items():
        hyp = tmp / f"hyps_{model}.jsonl"
        hyp.write_text("".join(json.dumps({"id": k, "text": v}, ensure_ascii=False) + "\n" for k, v in hyps.items()),
                       encoding="utf-8")
        score_files(ref, hyp, exp / "decode" / model / "test", group_by="accent")
    for name, lineage in (("M1", M1_LINEAGE), ("M2", M2_LINEAGE)):
        (exp / name).mkdir(parents=True)
        (exp / name / "lineage.json").write_text(json.dumps(lineage))
    res = CliRunner().invoke(cli, ["report", str(exp)])
    assert res.exit_code == 0, res.output
    return exp


# --------------------------------------------------------------------------- a small DOM over html.parser


class Node:
    def __init__(self, tag: str, attrs: dict, parent: "Node | None"):
        self.tag, self.attrs, self.parent, self.children = tag, attrs, parent, []

    @property
    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text for c in self.children)

    def classes(self) -> set[str]:
        return set((self.attrs.get("class") or "").split())

    def find_all(self, tag: str | None = None, cls: str | None = None, **attrs) -> list["Node"]:
        out = []
        for c in self.children:
            if isinstance(c, Node):
                if ((tag is None or c.tag == tag) and (cls is None or cls in c.classes())
                        and all(c.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())):
                    out.append(c)
                out += c.find_all(tag, cls, **attrs)
        return out

    def find(self, tag: str | None = None, cls: str | None = None, **attrs) -> "Node":
        found = self.find_all(tag, cls, **attrs)
        assert found, f"no <{tag} class={cls} {attrs}> under <{self.tag} {self.attrs}>"
        return found[0]


class TreeBuilder(HTMLParser):
    VOID = {"meta", "br", "img", "link", "input", "hr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = self.node = Node("#document", {}, None)
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        node = Node(tag, dict(attrs), self.node)
        self.node.children.append(node)
        if tag not in self.VOID:
            self.node = node

    def handle_startendtag(self, tag, attrs):  # <path ... /> in the SVG
        self.node.children.append(Node(tag, dict(attrs), self.node))

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if self.node.tag != tag:
            self.errors.append(f"</{tag}> closes <{self.node.tag}> at {self.getpos()}")
            while self.node.parent is not None and self.node.tag != tag:
                self.node = self.node.parent
        if self.node.parent is not None:
            self.node = self.node.parent

    def handle_data(self, data):
        self.node.children.append(data)


@pytest.fixture(scope="module")
def page(exp):
    text = (exp / "report" / "report_test.html").read_text(encoding="utf-8")
    builder = TreeBuilder()
    builder.feed(text)
    builder.close()
    assert builder.errors == []  # every element closed where it was opened
    assert builder.node is builder.root
    return text, builder.root


@pytest.fixture(scope="module")
def report(exp):
    return collect(exp, "test")


# --------------------------------------------------------------------------- the page


def test_table_has_the_reports_numbers(page, report):
    _, root = page
    table = root.find("table", id="rates")
    names = [th.text for th in table.find("thead").find_all("th")][2:]
    assert names == ["M0", "M1", "M2"]
    rows = {tr.find("th").text: [next((c for c in td.children if isinstance(c, str)), "") for td in tr.find_all("td")]
            for tr in table.find("tbody").find_all("tr")}
    intervals = {tr.find("th").text: [s.text for s in tr.find_all("small")] for tr in table.find("tbody").find_all("tr")}
    assert list(rows) == report.rows() and "en-American" in rows and f"en-{ODD_ACCENT}" in rows
    for label, cells in rows.items():
        assert cells[0] == report.unit(label)
        assert cells[1:] == [f"{report.rate(m, label):.2f}" for m in report.models], label
    # a value checked by hand: English M0 has one error (world -> word) in 6 + 3 + 2 words
    assert rows["en"][1] == f"{100 / 11:.2f}"
    # each later model carries its change from the model to the left with a paired bootstrap interval
    change = report.change(1, "en")
    assert change.difference == pytest.approx(report.rate(report.models[1], "en") - report.rate(report.models[0], "en"))
    assert change.low <= change.difference <= change.high
    assert intervals["en"] == [f"{d.difference:+.2f} [{d.low:+.2f}, {d.high:+.2f}]"
                               for d in (report.change(1, "en"), report.change(2, "en"))]
    assert report.change(0, "en") is None
    d = report.change(1, "en")
    md_en = next(line for line in report.to_markdown().splitlines() if line.startswith("| en |"))
    assert f"({d.difference:+.2f} [{d.low:+.2f}, {d.high:+.2f}]" in md_en
    # cells coloured against the previous model: en M0 9.09 -> M1 45.45 (worse) -> M2 18.18 (better)
    en = [tr for tr in table.find("tbody").find_all("tr") if tr.find("th").text == "en"][0]
    assert [sorted(td.classes() - {"num"}) for td in en.find_all("td")[1:]] == [[], ["worse"], ["better"]]


def test_page_is_self_contained_with_an_inline_plot(page):
    text, root = page
    svg = root.find("div", id="plot").find("svg")
    assert len(svg.find_all("path")) > 10  # lines, markers and the text drawn as paths
    for tag in ("script", "link", "img", "iframe", "object"):
        assert root.find_all(tag) == [], tag
    assert "@import" not in text
    assert re.findall(r"url\(([^)]*)\)", text) and all(u.startswith("#") for u in re.findall(r"url\(([^)]*)\)", text))
    hrefs = [n.attrs.get("href") for n in root.find_all("a")]
    assert hrefs and all(h.startswith("#") for h in hrefs)  # in-page links only
    uses = [n.attrs.get("xlink:href") or n.attrs.get("href") for n in svg.find_all("use")]
    assert uses and all(h.startswith("#") for h in uses)  # markers refer to shapes in the same SVG


def test_lineage_is_a_chain_of_every_model(page, exp):
    text, root = page
    chains = root.find_all("ol", cls="chain")
    assert len(chains) == 1  # M1's chain is a prefix of M2's: drawn once
    steps = chains[0].find_all("li")
    models = [li.find("strong").text if li.find_all("strong") else li.text.split()[0]
              for li in steps if "model" in li.classes()]
    assert models == ["M0", "M1", "M2"]
    rounds = [li.text for li in steps if "round" in li.classes()]
    assert len(rounds) == 2
    assert "round focus" in rounds[0] and "r=16, alpha=32, scope=attention, dropout=0.05" in rounds[0]
    assert "round feedback" in rounds[1] and "r=64, alpha=256, scope=wide" in rounds[1]
    assert "cuts_train.jsonl.gz ×2 [en]" in rounds[0] and "dev_wer 12.35%" in rounds[0]
    model_text = " ".join(li.text for li in steps if "model" in li.classes())
    assert "sha256 0123456789ab" in model_text and "converted from pypi:some-package" in model_text
    assert "sha256 m20000000000" in model_text
    assert str(exp.parent) not in chains[0].text and "data/manifests" not in chains[0].text  # no local path


def _lists(root, lang: str, model: str) -> dict[str, dict[str, int]]:
    details = root.find("section", id=f"lang-{lang}").find("details", data_model=model)
    out = {}
    for kind in ("substitutions", "deletions", "insertions"):
        table = details.find("table", cls=kind)
        rows = [tr.find_all("td") for tr in table.find("tbody").find_all("tr")]
        out[kind] = {r[0].text: int(r[1].text) for r in rows if len(r) == 2}
        out[kind + "_total"] = int(table.find("caption").text.split(":")[1].split("(")[0])
    return out


def test_most_frequent_errors_per_language(page, report):
    _, root = page
    m1_en = _lists(root, "en", "M1")
    assert m1_en["substitutions"] == {"the → a": 1, "cat → bat": 1}
    assert m1_en["deletions"] == {"the": 1}
    assert m1_en["insertions"] == {"to": 1, "you": 1}
    assert _lists(root, "en", "M0")["substitutions"] == {"world → word": 1}
    m2_ja = _lists(root, "ja", "M2")
    assert m2_ja["substitutions"] == {"天 → 電": 1} and m2_ja["deletions"] == {"う": 1}  # characters, not words
    assert _lists(root, "fr", "M2") == {"substitutions": {}, "substitutions_total": 0, "deletions": {},
                                         "deletions_total": 0, "insertions": {}, "insertions_total": 0}
    # the last model's lists are open, the others folded
    section = root.find("section", id="lang-en")
    assert [("open" in d.attrs) for d in section.find_all("details")] == [False, False, True]
    # every list's total is the table's count for that language
    for m in report.models:
        for row in m.by_language.rows:
            lists = _lists(root, row.group, m.model)
            assert (lists["substitutions_total"], lists["deletions_total"], lists["insertions_total"]) == \
                (row.sub, row.dele, row.ins)


def test_utterances_that_got_worse(page):
    _, root = page
    en = root.find("section", id="lang-en")
    pair = en.find("div", cls="pair", data_before="M0", data_after="M1")
    assert "2 of 3 utterance(s) got worse, 1 better" in pair.text
    rows = pair.find_all("tr", cls="worse-utt")
    assert [r.attrs["data-id"] for r in rows] == [EN1, EN3]  # most added errors first, then by ID
    en1 = rows[0]
    assert (en1.find("td", cls="errors-before").text, en1.find("td", cls="errors-after").text) == ("0", "3")
    assert en1.find("td", cls="ref").text == "the cat sat on the mat"
    assert en1.find("td", cls="hyp-before").text == "the cat sat on the mat"
    after = en1.find("td", cls="hyp-after")
    assert [(s.text, s.attrs["title"]) for s in after.find_all("span", cls="sub")] == [("a", "the"), ("bat", "cat")]
    assert after.find("span", cls="del").text == "the"
    en3 = rows[1]
    assert [s.text for s in en3.find("td", cls="hyp-after").find_all("span", cls="ins")] == ["to", "you"]
    assert ODD_ACCENT in en3.text and en3.find_all("i") == []  # escaped, not markup
    # M1 -> M2: EN1 got better, nothing got worse in English
    later = en.find("div", cls="pair", data_before="M1", data_after="M2")
    assert later.find_all("tr", cls="worse-utt") == [] and "0 of 3 utterance(s) got worse, 1 better" in later.text
    ja = root.find("section", id="lang-ja").find("div", cls="pair", data_before="M1", data_after="M2")
    assert [r.attrs["data-id"] for r in ja.find_all("tr", cls="worse-utt")] == [JA2]


# --------------------------------------------------------------------------- the functions under it


def test_error_counts_and_worse_from_scores(report):
    import jiwer

    m0, m1, _ = report.models
    utts = m1.by_language.utterances
    out = jiwer.process_words([" ".join(u.ref) for u in utts], [" ".join(u.hyp) for u in utts])
    counts = error_counts(utts, {u.id: a for u, a in zip(utts, out.alignments)})
    assert counts["en"].substitutions == {("the", "a"): 1, ("cat", "bat"): 1}
    assert counts["ja"].unit == "char" and counts["ja"].substitutions == {("天", "電"): 1}
    pairs = worse_utterances(m0.by_language.utterances, utts)
    assert [(a.id, a.errors, b.errors) for a, b in pairs] == [(EN1, 0, 3), (EN3, 0, 2), (JA1, 0, 1)]


def test_chain_of_reads_nested_lineage():
    chain = chain_of(M2_LINEAGE)
    assert [s["kind"] for s in chain] == ["model", "round", "model", "round", "model"]
    assert [s.get("name") for s in chain[::2]] == ["M0", "M1", "M2"]
    assert [s["round"] for s in chain[1::2]] == ["focus", "feedback"]
    assert chain[1]["data"][0]["cuts"] == "cuts_train.jsonl.gz"  # file name only


# --------------------------------------------------------------------------- a real browser, when installed


def _chrome():
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver_path = shutil.which("chromedriver")
    if not binary or not driver_path:
        pytest.skip("no Chromium and chromedriver (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver_path), options=options)


def test_page_in_headless_chromium(exp, report):
    driver = _chrome()
    try:
        driver.get((exp / "report" / "report_test.html").as_uri())
        seen = driver.execute_script("""
            const svg = document.querySelector('#plot svg').getBoundingClientRect();
            const rows = [...document.querySelectorAll('#rates tbody tr')].map(
                tr => [...tr.children].map(c => c.innerText.trim()));
            const sub = document.querySelector('#lang-en tr.worse-utt td.hyp-after span.sub');
            return {svg: [svg.width, svg.height], rows: rows,
                    resources: performance.getEntriesByType('resource').length,
                    sub: [sub.innerText, sub.title, getComputedStyle(sub).backgroundColor],
                    title: document.title};
        """)
        logs = driver.get_log("browser")
    finally:
        driver.quit()
    assert seen["svg"][0] > 300 and seen["svg"][1] > 100  # the plot is drawn
    assert seen["resources"] == 0  # nothing loaded from anywhere else
    assert [r[0] for r in seen["rows"]] == report.rows()
    assert seen["rows"][report.rows().index("Overall")][2:] == \
        [f"{report.rate(m, 'Overall'):.2f}" for m in report.models]
    assert seen["sub"][:2] == ["a", "the"] and seen["sub"][2] != "rgba(0, 0, 0, 0)"  # styled inline
    assert seen["title"] == f"ilt report: {Path(exp).name} (test)"
    assert [entry for entry in logs if entry["level"] == "SEVERE"] == []
