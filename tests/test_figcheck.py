"""`topgap claims`: claims blocks equal their rendering, and every free number of a results section is a JSON field."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from topgap.cli import main
from topgap.eval.claims import render_claims
from topgap.eval.figcheck import check_files, leaves, numbers, write_blocks

CARD = {"models": {"k64": {"accuracy": 0.925, "iou": 0.63812, "k": 64, "cam_size": [56, 56]},
                   "baseline": {"accuracy": 0.836, "n_images": 298, "diff": -0.108, "gain": 0.04}},
        "eps": 0.00392156862745098, "ks": [256, 1024], "n_train": 1000, "n_val": 1900}


def check(tmp_path: Path, md: str, data: dict | None = None, name: str = "README.md") -> list[str]:
    """Problems of one Markdown file `name` under tmp_path, beside card.json holding `data` (CARD by default)."""
    (tmp_path / "card.json").write_text(json.dumps(CARD if data is None else data))
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(md)
    return check_files([path], tmp_path)


def results(text: str) -> str:
    return f"## Results\n<!-- figures: card.json -->\n\n{text}\n"


def values(text: str) -> list[float]:
    return [f.value for f in numbers(text)]


def test_a_section_whose_numbers_are_fields_passes(tmp_path):
    assert check(tmp_path, results("k = 64 reaches 0.925 (IOU 0.638) on 298 images, 56x56 maps; "
                                   "the baseline 0.836.")) == []


def test_a_rounded_figure_passes_and_a_wrong_one_names_the_nearest_leaf(tmp_path):
    data = {"models": {"k64": {"accuracy": 0.92566}}}
    assert check(tmp_path, results("accuracy 0.926, or 0.93"), data) == []
    assert check(tmp_path, results("accuracy 0.926"), {"models": {"k64": {"accuracy": 0.925}}}) == [
        "README.md:4: 0.926 is not a field of card.json (nearest: 0.925 at /models/k64/accuracy)"]
    assert check(tmp_path, results("accuracy\n0.931"), data) == [
        "README.md:5: 0.931 is not a field of card.json (nearest: 0.92566 at /models/k64/accuracy)"]


def test_percent_matches_the_fraction_or_the_percent_itself(tmp_path):
    assert check(tmp_path, results("83.6% accurate, 84% rounded")) == []
    assert check(tmp_path, results("83.6% accurate"), {"acc": 83.6}) == []
    assert "83.7% is not a field" in check(tmp_path, results("83.7% accurate"))[0]


def test_a_fraction_is_one_number_matched_by_value_or_by_both_parts(tmp_path):
    assert [f.text for f in numbers("eps = 1/255")] == ["1/255"]
    assert check(tmp_path, results("eps = 1/255; k = 256/1024")) == []  # 1/255 by value; 256 and 1024 both leaves
    assert "1/254 is not a field" in check(tmp_path, results("eps = 1/254"))[0]


def test_sizes_ranges_and_thousands(tmp_path):
    assert values("56x56 maps, 224×224 px") == [56, 56, 224, 224]
    assert values("0.39-0.58 and 1,000-1,900 images, [20, 40]") == [0.39, 0.58, 1000, 1900, 20, 40]
    assert [(f.text, f.percent) for f in numbers("objects of 4-10%")] == [("4%", True), ("10%", True)]
    assert check(tmp_path, results("1,000-1,900 images, 0.925-0.836")) == []


def test_signs(tmp_path):
    assert [(f.value, f.signed) for f in numbers("+0.040 [-0.108, −0.5]")] == [(0.04, True), (-0.108, True),
                                                                               (-0.5, True)]
    assert check(tmp_path, results("gain +0.040, diff -0.108, or 0.108 worse")) == []
    assert "+0.108 is not a field" in check(tmp_path, results("diff +0.108"))[0]  # an explicit sign must agree


def test_structural_numbers_are_not_figures():
    text = ("k64 seed0 pgd10_correct x86_64 B0 3D PGD-40 ResNet-18 3-breed eps/30 seed0-2 7x 1e-15 Table 2, "
            "Tables 3 and 4, eq. 3, Eq. (5), Figure 7, Section 4.2, appendix 1, issues 12 and 13, #14, § 2, "
            "CVPR 2012, NeurIPS 2020, (Choe et al., 2020; Smith, 2019), Wang et al. 2004, Jones (2011)")
    assert numbers(text) == []
    assert values("bootstrap, 2000 resamples") == [2000]  # a year only inside a citation


def test_code_comments_links_urls_versions_and_list_markers_are_not_scanned(tmp_path):
    md = results("run `topgap --k 7` and\n```\nport 7860\n```\n~~~\n0.1\n~~~\n<!-- 0.2\n0.3 -->\n"
                 "[the report of 0.925](reports/k17/r0.5.md) ![p](a/3.png) https://x.org/v9/p?a=4.5\n"
                 "torch 2.15.0, pyyaml==6.0.3, <img width=\"400\">\n1. first\n2) second\n")
    assert check(tmp_path, md) == []
    assert "0.5 is not a field" in check(tmp_path, results("[the report of 0.5](x.md)"))[0]  # link text is prose


def test_out_of_scope_sections_are_not_checked_but_results_sections_must_cite(tmp_path):
    assert check(tmp_path, "# App\n\n## Quick start\n\nOpen port 7860.\n") == []
    assert check(tmp_path, "# App\n\n## Results\n\nOpen port 7860.\n") == [
        "README.md:3: section 'Results' states results but cites no JSON; add <!-- figures: path.json --> under "
        "its heading"]
    assert check(tmp_path, "## Performance\n\nno figures here\n") == []


def test_a_subsection_inherits_its_parents_citations_but_not_its_siblings(tmp_path):
    md = ("## Results\n<!-- figures: card.json -->\n\n### Pets\n\n0.925\n\n#### Seeds\n\n298\n\n"
          "## Across seeds\n\n### More\n<!-- figures: other.json -->\n\n0.5\n\n### Rest\n\n0.5\n")
    (tmp_path / "other.json").write_text(json.dumps({"x": 0.5}))
    assert check(tmp_path, md) == ["README.md:19: section 'Rest' states results but cites no JSON; add "
                                   "<!-- figures: path.json --> under its heading"]


def test_a_whole_file_is_in_scope_in_model_cards_and_on_request(tmp_path):
    card = "# Family\n<!-- figures: ../../card.json -->\n\n## Training\n\n0.925 in 7 min\n"
    assert check(tmp_path, card, name="models/fam/README.md") == [  # 'Training' matches no result heading
        "models/fam/README.md:6: 7 is not a field of ../../card.json (nearest: 0.925 at /models/k64/accuracy)"]
    assert check(tmp_path, "<!-- figures-scope: file -->\n# Notes\n\n## Setup\n\n7 min\n", name="notes.md")[0] \
        .startswith("notes.md:4: section 'Setup' states results but cites no JSON")


def test_large_lists_hold_no_allowed_values(tmp_path):
    data = {"short": [i / 100 for i in range(64)], "per_image": [i / 1000 for i in range(65)]}
    assert [v for v, _ in leaves(data)] == [i / 100 for i in range(64)]
    assert check(tmp_path, results("0.63"), data) == []
    assert "0.064 is not a field" in check(tmp_path, results("0.064"), data)[0]


def test_a_json_pointer_narrows_the_citation(tmp_path):
    md = "## Results\n<!-- figures: card.json#/models/k64 -->\n\n0.925, and 0.836\n"
    assert check(tmp_path, md) == ["README.md:4: 0.836 is not a field of card.json#/models/k64 "
                                   "(nearest: 0.925 at /accuracy)"]
    problems = check(tmp_path, "## Results\n<!-- figures: card.json#/models/k65 -->\n\n0.925\n")
    assert problems == ["README.md:2: card.json#/models/k65: the JSON pointer /models/k65 fails at 'k65' "
                        "(not a key or index there)"]


def test_a_missing_or_invalid_json_is_a_problem_at_its_marker(tmp_path):
    problems = check(tmp_path, "## Results\n<!-- figures: gone.json -->\n\n0.925\n")
    assert len(problems) == 1 and problems[0].startswith("README.md:2: cannot read gone.json: No such file")
    (tmp_path / "bad.json").write_text("{0.925")
    problems = check(tmp_path, "## Results\n<!-- figures: bad.json -->\n\n0.925\n")
    assert len(problems) == 1 and problems[0].startswith("README.md:2: bad.json is not valid JSON")


# A tiny results.json for the real renderer, topgap.eval.claims.render_claims.
RESULTS = {"dataset": "shapes", "split": "test", "n_images": 300, "cam_target": "predicted",
           "selection": {"by": {"accuracy": {"model": "k41"}}},
           "models": {"baseline": {"kind": "baseline", "k": None, "accuracy": 0.98},
                      "k41": {"kind": "topgap", "k": 41, "accuracy": 0.983, "comparisons": {"baseline": {
                          "accuracy": {"diff": 0.0033, "low": -0.01, "high": 0.02, "verdict": "no clear difference"},
                          "iou_paper": {"diff": -0.11, "low": -0.142, "high": -0.077, "verdict": "worse"}}}}}}


@pytest.fixture
def claims_doc(tmp_path):
    """README.md with a correct claims block from results.json, and the block's body."""
    (tmp_path / "results.json").write_text(json.dumps(RESULTS))
    body = render_claims(RESULTS)
    path = tmp_path / "README.md"
    path.write_text(f"# Top-GAP\n\n## Results\n\nk = 41 reaches 0.983.\n\n<!-- claims: results.json -->\n{body}\n"
                    "<!-- /claims -->\n\n## Tests\n")
    return path, body


def test_a_rendered_claims_block_passes_and_cites_its_json(claims_doc, tmp_path):
    assert check_files([claims_doc[0]], tmp_path) == []  # 41 and 0.983 are fields of the block's source


def test_an_edited_claims_block_is_caught_and_write_restores_it(claims_doc, tmp_path):
    path, body = claims_doc
    good = path.read_text()
    path.write_text(good.replace("-0.110", "-0.100"))
    assert check_files([path], tmp_path) == [  # only the block: its body is not scanned for figures
        "README.md:7: the claims block from results.json was edited by hand or its JSON changed; "
        "run topgap claims --write README.md"]
    assert write_blocks(path) is True
    assert check_files([path], tmp_path) == [] and body in path.read_text()
    assert write_blocks(path) is False


def test_claims_block_errors(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(RESULTS))
    path = tmp_path / "README.md"
    path.write_text("## Results\n\n<!-- claims: results.json -->\ntext\n")
    assert check_files([path], tmp_path) == [
        "README.md:3: the claims block from results.json has no closing <!-- /claims -->"]
    path.write_text("## Results\n\n<!-- claims: results.json#/models -->\n<!-- /claims -->\n<!-- /claims -->\n")
    problems = check_files([path], tmp_path)
    assert problems[0] == "README.md:5: <!-- /claims --> without an opening <!-- claims: SOURCE -->"
    assert problems[1].startswith("README.md:3: cannot render the claims of results.json#/models")
    path.write_text("```\n<!-- claims: nowhere.json -->\n```\n")  # a marker shown as code is no block
    assert check_files([path], tmp_path) == []


def test_cli_fails_on_a_problem_and_passes_a_clean_file(tmp_path, capsys, monkeypatch):
    check(tmp_path, results("accuracy 0.931"))
    assert main(["claims", "--root", str(tmp_path)]) == 2  # README.md found as a default file
    err = capsys.readouterr().err
    assert "topgap claims: error: 1 problem(s)" in err and "README.md:4: 0.931 is not a field" in err
    (tmp_path / "README.md").write_text(results("accuracy 0.925"))
    monkeypatch.chdir(tmp_path)
    assert main(["claims"]) == 0
    assert json.loads(capsys.readouterr().out) == {"checked": ["README.md"], "rewritten": []}


def test_cli_write_rerenders_then_checks(claims_doc, tmp_path, capsys):
    path, _ = claims_doc
    good = path.read_text()
    path.write_text(good.replace("-0.110", "-0.100"))
    assert main(["claims", "--root", str(tmp_path), str(path)]) == 2
    assert main(["claims", "--write", "--root", str(tmp_path), str(path)]) == 0
    assert path.read_text().replace("\n\n", "\n") == good.replace("\n\n", "\n")
    assert json.loads(capsys.readouterr().out)["rewritten"] == ["README.md"]


def test_a_docs_page_is_checked_and_rewritten_by_default(tmp_path, capsys, monkeypatch):
    """A page under docs/ (the Results moved to docs/results.md) is a default file: `topgap claims` checks its claims
    block (its SOURCE relative to the page, ../reports/...) and its figures, and `topgap claims --write` with no file
    named re-renders the block in place."""
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "results.json").write_text(json.dumps(RESULTS))
    (tmp_path / "README.md").write_text("# Top-GAP\n\nSee docs/results.md.\n")
    page = tmp_path / "docs" / "results.md"
    page.parent.mkdir()
    good = (f"# Reproducing the paper\n\n## Results\n\n<!-- figures: ../reports/results.json -->\n\n"
            f"k41 reaches 0.983.\n\n<!-- claims: ../reports/results.json -->\n{render_claims(RESULTS)}\n"
            "<!-- /claims -->\n")
    page.write_text(good)
    monkeypatch.chdir(tmp_path)
    assert main(["claims"]) == 0
    assert json.loads(capsys.readouterr().out) == {"checked": ["README.md", "docs/results.md"], "rewritten": []}
    page.write_text(good.replace("-0.110", "-0.100").replace("0.983", "0.984"))  # a block and a figure edited
    assert main(["claims"]) == 2
    err = capsys.readouterr().err
    assert "docs/results.md:9: the claims block from ../reports/results.json was edited by hand" in err
    assert "docs/results.md:7: 0.984 is not a field of ../reports/results.json" in err
    page.write_text(good.replace("-0.110", "-0.100"))
    assert main(["claims", "--write"]) == 0  # no file named: the docs pages are rewritten too
    assert json.loads(capsys.readouterr().out)["rewritten"] == ["docs/results.md"]
    assert page.read_text().replace("\n\n", "\n") == good.replace("\n\n", "\n")


def test_a_family_card_must_be_the_rendering_of_its_card_json(tmp_path, monkeypatch):
    from topgap.eval.card import card_markdown

    card = {"title": "Fam", "data": "Made up.", "commands": ["topgap train"], "hardware": "a CPU",
            "training": {"k4": {"kind": "topgap", "k": 4, "epochs": 1, "val_accuracy": 0.5, "train_seconds": 6}},
            "training_minutes": 0.1, "plots": [],
            "evaluation": {"dataset": "d", "split": "test", "n_images": 2, "cam_target": "label", "shifts": {},
                           "models": {"k4": {"kind": "topgap", "k": 4}}}}
    fam = tmp_path / "models" / "fam"
    fam.mkdir(parents=True)
    (fam / "card.json").write_text(json.dumps(card))
    from topgap.eval import card as card_module

    monkeypatch.setattr(card_module, "markdown_report", lambda results, title, claims: "# t\nno tables")  # elsewhere
    (fam / "README.md").write_text(card_markdown(card))
    assert check_files([fam / "README.md"], tmp_path) == []
    (fam / "README.md").write_text(card_markdown(card).replace("Made up.", "Made up, and better."))
    assert any("differs from the rendering of its card.json" in p for p in check_files([fam / "README.md"], tmp_path))


def test_the_repository_docs_pass():
    """The README, docs and every family card of this repository: each rendered block and each figure checks out."""
    from topgap.eval.figcheck import default_files

    root = Path(__file__).resolve().parents[1]
    assert check_files(default_files(root), root) == []
