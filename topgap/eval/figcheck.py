"""`topgap claims`: every figure in the results sections of the docs comes from a JSON.

Two checks of Markdown files (by default README.md, docs/**/*.md and models/*/README.md under --root):

0. A family card (models/*/README.md beside its card.json) is exactly :func:`topgap.eval.card.card_markdown` of
   its card.json.
1. A claims block, ``<!-- claims: SOURCE -->`` ... ``<!-- /claims -->``, holds exactly
   :func:`topgap.eval.claims.render_claims` of the JSON value at SOURCE: ``path.json`` or ``path.json#/json/pointer``
   (RFC 6901), relative to the Markdown file. ``--write`` re-renders every block in place.
2. Every free number of a results section is a field of the JSON it cites: ``<!-- figures: SOURCE [SOURCE ...] -->``
   in the section's own text (a claims block cites its SOURCE too); a subsection may also use what every enclosing
   section cites. Results sections: those that cite JSON, those whose heading matches :data:`RESULT_HEADINGS`, their
   subsections, and the whole of models/*/README.md and of any file that starts with ``<!-- figures-scope: file -->``.
   A printed number with d decimals matches a numeric leaf within half a unit of its last digit (83.6% also as
   0.836), a fraction N/M its quotient or both N and M. Not checked: code, comments, link targets, URLs, headings,
   claims blocks, and structural numbers (k64, PGD-40, 56x56 is two numbers, Table 2, issue 22, CVPR 2012, 2.15.0,
   ==6.0.3, list item markers).

Example::

    topgap claims --write README.md models/oxford-pet-lite0/README.md
    topgap claims
"""
from __future__ import annotations

import argparse
import json
import math
import re
from bisect import bisect_left
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple
from urllib.parse import unquote

from ..io import atomic_write

__all__ = ["RESULT_HEADINGS", "CITE_WORDS", "MAX_LIST", "Figure", "numbers", "leaves", "default_files",
           "check_files", "write_blocks", "register", "run"]

RESULT_HEADINGS = r"result|claim|finding|benchmark|performance|bundled models|across seeds|verdict|compar|robustness"
CITE_WORDS = ("table", "tables", "figure", "figures", "fig.", "eq.", "eqs.", "equation", "section", "sections", "§",
              "appendix", "issue", "issues", "#")  # a number right after one of these is a reference, not a figure
MAX_LIST = 64  # longer lists (per-image arrays) hold no citable figures
SCOPE_FILE = "<!-- figures-scope: file -->"

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
FIGURES = re.compile(r"^\s*<!--\s*figures:\s*(.*?)\s*-->\s*$")
CLAIMS_OPEN = re.compile(r"^\s*<!--\s*claims:\s*(\S+)\s*-->\s*$")
CLAIMS_CLOSE = re.compile(r"^\s*<!--\s*/claims\s*-->\s*$")
COMMENT = re.compile(r"<!--.*?-->", re.S)
CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`).*?(?<!`)\1(?!`)", re.S)
MASKS = (  # text that is not prose, after comments and code spans
    re.compile(r"(?<=\])\([^)\n]*\)"),  # link and image targets
    re.compile(r"^ {0,3}\[[^\]\n]+\]:.*$", re.M),  # link reference definitions
    re.compile(r"\[\^[^\]\n]*\]"),  # footnote references
    re.compile(r"\b(?:https?|ftp)://[^\s<>)\]]+|\bwww\.[^\s<>)\]]+"),  # bare URLs
    re.compile(r"</?[A-Za-z][A-Za-z0-9-]*(?:\s[^<>\n]*)?/?>"),  # HTML tags and their attributes
    re.compile(r"(?<![\w.])\d+(?:\.\d+){2,}\w*"),  # versions: 2.15.0
    re.compile(r"(?<=[\w\]])(?:===|==|>=|<=|~=|!=)\s*\d[\w.*+!-]*"),  # version pins: pyyaml==6.0.3
    re.compile(r"^(?:[ \t]*>)*[ \t]*\d{1,9}[.)](?=[ \t]|$)", re.M),  # ordered list item markers
)
_N = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?"
TOKEN = re.compile(rf"(?P<sign>[+\-\u2212])?(?P<num>{_N})(?:/(?P<den>{_N}))?(?P<pct>%)?")
_WORDS = "|".join(re.escape(w) for w in CITE_WORDS)
CITED = re.compile(rf"(?<!\w)(?:{_WORDS})\s*\(?(?:[A-Z]?\d+(?:\.\d+)?\s*(?:,|and|or|&|to|-|–)\s*)*$", re.I)
YEAR_AFTER = re.compile(r"(?:et al\.,?\s*\(?|(?<!\w)(?:[A-Z][A-Za-z]*[A-Z][A-Za-z]*|arXiv)\s+)$")  # et al., CVPR
YEAR_IN_PARENS = re.compile(r"(?:,|\b[A-Z][a-z]+\s*\()\s*$")  # (Smith, 2019) or Smith (2019)


class Figure(NamedTuple):
    """A number as printed: its text, signed value, decimals, % sign, explicit sign, and N, M of a fraction N/M."""
    text: str
    value: float
    decimals: int
    percent: bool = False
    signed: bool = False
    parts: tuple[Figure, Figure] | None = None


def _plain(text: str, sign: str | None = None, percent: bool = False) -> Figure:
    value = float(text.replace(",", "")) * (-1 if sign in ("-", "\u2212") else 1)
    return Figure((sign or "") + text + "%" * percent, value, len(text.partition(".")[2]), percent, sign is not None)


def _figure(m: re.Match, signed: bool) -> Figure | None:
    """The Figure of a TOKEN match; None for a fraction over 0."""
    sign = m["sign"] if signed else None
    if not m["den"]:
        return _plain(m["num"], sign, bool(m["pct"]))
    num, den = _plain(m["num"]), _plain(m["den"])
    if den.value == 0:
        return None
    value = num.value / den.value * (-1 if sign in ("-", "\u2212") else 1)
    return Figure((sign or "") + f"{m['num']}/{m['den']}" + (m["pct"] or ""), value, 0, bool(m["pct"]),
                  sign is not None, (num, den))


def _word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def _glued_before(line: str, start: int, prev_skipped: bool | None) -> bool:
    """Glued to what precedes: a letter (seed0), a word and a hyphen (PGD-40) or slash (eps/30), or a structural
    number and a hyphen (the 2 of seed0-2). `prev_skipped`: whether the number that ends at start-1 was left out
    (None: none ends there). The x of 56x56 separates."""
    b, c = (line[start - 1] if start > 0 else " "), (line[start - 2] if start > 1 else " ")
    if b in "xX×" and c.isdigit():
        return False
    if _word(b):
        return True
    return b in "-–−/" and (c.isalpha() or c == "_" or b == "/" or bool(prev_skipped))


def _glued_after(line: str, end: int) -> bool:
    """Glued to what follows: a letter (3D, 7x), or a hyphen or slash and a letter (3-breed, 30/eps)."""
    a, n = (line[end] if end < len(line) else " "), (line[end + 1] if end + 1 < len(line) else " ")
    if a in "xX×" and n.isdigit():
        return False
    return _word(a) or a in "-–/" and (n.isalpha() or n == "_")


def _citation_year(line: str, start: int, end: int) -> bool:
    """A year 1900-2099 of a citation: after et al. or a venue (CVPR 2012), or (Smith, 2019), Smith (2019)."""
    if not re.fullmatch(r"(?:19|20)\d\d", line[start:end]):
        return False
    before = line[:start]
    return bool(YEAR_AFTER.search(before) or YEAR_IN_PARENS.search(before) and re.match(r"[);\]]", line[end:]))


def _tokens(line: str) -> list[tuple[int, int, Figure | None]]:
    """(start, end, Figure) of every number of a line; Figure None for a structural one."""
    out: list[tuple[int, int, Figure | None]] = []
    for m in TOKEN.finditer(line):
        before = line[m.start() - 1] if m.start() > 0 else " "
        signed = bool(m["sign"]) and not (_word(before) or before == "%")  # 0.39-0.58: a range, not a sign
        start, end = (m.start() if signed else m.start("num")), m.end()
        prev = out[-1][2] is None if out and out[-1][1] == start - 1 else None
        skip = (_glued_before(line, start, prev) or _glued_after(line, end) or bool(CITED.search(line[:start]))
                or _citation_year(line, start, end))
        out.append((start, end, None if skip else _figure(m, signed)))
    return out


def numbers(text: str) -> list[Figure]:
    """The figures of a line of prose that must be fields of a JSON, in order; structural numbers left out.
    The first number of a range takes the % of the second (4-10%)."""
    toks = _tokens(text)
    out = []
    for (_, e1, f1), (s2, _, f2) in zip(toks, [*toks[1:], (0, 0, None)]):
        if f1 and f2 and f2.percent and not f1.percent and s2 == e1 + 1 and text[e1] in "-–":
            f1 = f1._replace(text=f1.text + "%", percent=True)
        if f1:
            out.append(f1)
    return out


def _escape(key: Any) -> str:
    return str(key).replace("~", "~0").replace("/", "~1")


def leaves(value: Any, pointer: str = "") -> list[tuple[float, str]]:
    """(number, JSON pointer) of every finite int/float leaf (not bool), through dicts and lists of at most
    :data:`MAX_LIST` elements."""
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [(float(value), pointer)] if math.isfinite(value) else []
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list) and len(value) <= MAX_LIST:
        items = enumerate(value)
    else:
        return []
    return [leaf for k, v in items for leaf in leaves(v, f"{pointer}/{_escape(k)}")]


class _Leaves:
    """The numeric leaves of the cited JSON values, sorted, for interval look-ups: (value, pointer, source)."""

    def __init__(self, items: list[tuple[float, str, str]]):
        self.items = sorted(items)
        self.values = [v for v, _, _ in self.items]

    def near(self, target: float, tol: float) -> bool:
        i = bisect_left(self.values, target - tol)
        return i < len(self.values) and self.values[i] <= target + tol

    def nearest(self, target: float) -> tuple[float, str, str] | None:
        i = bisect_left(self.values, target)
        return min(self.items[max(i - 1, 0):i + 1], key=lambda it: abs(it[0] - target), default=None)


def _targets(f: Figure) -> list[tuple[float, float]]:
    """(value, tolerance) pairs a leaf may match: signed, or either sign when printed without one; also /100 for %."""
    if f.parts:
        return [(f.value, 1e-6 + 1e-3 * abs(f.value))]
    tol = 0.5 * 10.0 ** -f.decimals + 1e-9
    values = [f.value] if f.signed else [f.value, -f.value]
    return [(v, tol) for v in values] + [(v / 100, tol / 100) for v in values if f.percent]


def _is_field(f: Figure, found: _Leaves) -> bool:
    if any(found.near(t, tol) for t, tol in _targets(f)):
        return True
    return f.parts is not None and all(_is_field(p, found) for p in f.parts)


def _nearest(f: Figure, found: _Leaves, several: bool) -> str:
    """'nearest: 0.925 at /models/k64/accuracy' (with 'in SOURCE' when several are cited)."""
    best = None
    for t, tol in _targets(f):
        hit = found.nearest(t)
        if hit and (best is None or abs(hit[0] - t) / tol < best[0]):
            best = (abs(hit[0] - t) / tol, hit)
    if best is None:
        return "the cited JSON holds no numbers"
    x, pointer, source = best[1]
    return f"nearest: {x:g} at {pointer or '(the whole value)'}" + (f" in {source}" if several else "")


@dataclass
class _Section:
    level: int  # 0: the text before the first heading
    title: str
    line: int  # 1-based line of the heading
    parent: _Section | None
    cites: list[tuple[int, str]] = field(default_factory=list)  # (line, SOURCE) of its own markers and claims blocks
    lines: list[int] = field(default_factory=list)  # 0-based indices of its own prose lines

    def available(self) -> list[tuple[int, str]]:
        return self.cites + (self.parent.available() if self.parent else [])

    def in_scope(self, whole_file: bool) -> bool:
        return (whole_file or bool(self.cites) or bool(re.search(RESULT_HEADINGS, self.title, re.I))
                or self.parent is not None and self.parent.in_scope(whole_file))


@dataclass
class _Block:
    start: int  # 0-based index of the opening marker
    source: str
    end: int | None = None  # index of the closing marker; None: unterminated


@dataclass
class _Doc:
    sections: list[_Section]
    blocks: list[_Block]
    stray: list[int]  # 1-based lines of closing markers without an opening one


def _parse(lines: list[str]) -> _Doc:
    """Sections, claims blocks and markers of a Markdown file, outside fenced code."""
    doc = _Doc([_Section(0, "", 1, None)], [], [])
    stack, fence, block = [doc.sections[0]], None, None
    for i, line in enumerate(lines):
        if fence:
            if re.match(rf" {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}\s*$", line):
                fence = None
        elif block:
            if CLAIMS_CLOSE.match(line):
                block.end, block = i, None
        elif m := FENCE.match(line):
            fence = m[1]
        elif m := HEADING.match(line):
            while stack[-1].level >= len(m[1]):
                stack.pop()
            stack.append(_Section(len(m[1]), (m[2] or "").strip(), i + 1, stack[-1]))
            doc.sections.append(stack[-1])
        elif m := CLAIMS_OPEN.match(line):
            block = _Block(i, m[1])
            doc.blocks.append(block)
            stack[-1].cites.append((i + 1, m[1]))
        elif m := FIGURES.match(line):
            stack[-1].cites += [(i + 1, s) for s in m[1].split()]
        elif CLAIMS_CLOSE.match(line):
            doc.stray.append(i + 1)
        else:
            stack[-1].lines.append(i)
    return doc


def _blank(m: re.Match) -> str:
    return re.sub(r"[^\n]", " ", m[0])


def _masked(text: str) -> str:
    """`text` with everything that is not prose (comments, code spans, link targets, ...) blanked, lines kept."""
    text = COMMENT.sub(_blank, text)
    text = "".join(CODE_SPAN.sub(_blank, p) for p in re.split(r"(\n[ \t]*\n)", text))  # spans end at blank lines
    for rx in MASKS:
        text = rx.sub(_blank, text)
    return text


def _pointer(value: Any, pointer: str) -> Any:
    """The value at an RFC 6901 pointer; ValueError naming the step that fails."""
    if pointer and not pointer.startswith("/"):
        raise ValueError(f"the JSON pointer {pointer!r} must start with /")
    for raw in pointer.split("/")[1:]:
        key = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(value, dict) and key in value:
            value = value[key]
        elif isinstance(value, list) and re.fullmatch(r"0|[1-9]\d*", key) and int(key) < len(value):
            value = value[int(key)]
        else:
            raise ValueError(f"the JSON pointer {pointer} fails at {key!r} (not a key or index there)")
    return value


def _loader(base: Path, cache: dict[Path, Any]) -> Callable[[str], Any]:
    """load(SOURCE): the JSON value at 'path.json#/pointer' relative to `base`; ValueError saying what is wrong."""
    def load(source: str) -> Any:
        rel, _, pointer = source.partition("#")
        path = (base / rel).resolve()
        if path not in cache:
            try:
                cache[path] = json.loads(path.read_text())
            except OSError as e:
                raise ValueError(f"cannot read {source}: {e.strerror or e} ({path})") from None
            except json.JSONDecodeError as e:
                raise ValueError(f"{source} is not valid JSON ({e})") from None
        try:
            return _pointer(cache[path], unquote(pointer))
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None
    return load


def _render(data: Any, source: str) -> list[str]:
    """The lines of render_claims(data), `data` read from SOURCE; ValueError when it cannot be rendered."""
    from .claims import render_claims

    try:
        return render_claims(data).split("\n")
    except (KeyError, TypeError, AttributeError, IndexError) as e:
        raise ValueError(f"cannot render the claims of {source} ({type(e).__name__}: {e}); "
                         "point it at a results.json or seeds.json value") from None


def _trim(lines: list[str]) -> list[str]:
    """`lines` without leading and trailing blank lines."""
    keep = [i for i, s in enumerate(lines) if s.strip()]
    return lines[keep[0]:keep[-1] + 1] if keep else []


def _check_blocks(doc: _Doc, lines: list[str], name: str, load: Callable[[str], Any]) -> list[str]:
    problems = [f"{name}:{n}: <!-- /claims --> without an opening <!-- claims: SOURCE -->" for n in doc.stray]
    for b in doc.blocks:
        if b.end is None:
            problems.append(f"{name}:{b.start + 1}: the claims block from {b.source} has no closing <!-- /claims -->")
            continue
        try:
            data = load(b.source)
        except ValueError:
            continue  # reported at its marker by _check_cites
        try:
            expected = _render(data, b.source)
        except ValueError as e:
            problems.append(f"{name}:{b.start + 1}: {e}")
            continue
        if _trim(lines[b.start + 1:b.end]) != _trim(expected):
            problems.append(f"{name}:{b.start + 1}: the claims block from {b.source} was edited by hand or its JSON "
                            f"changed; run topgap claims --write {name}")
    return problems


def _check_cites(doc: _Doc, name: str, load: Callable[[str], Any]) -> list[str]:
    problems = []
    for line, source in dict.fromkeys(c for s in doc.sections for c in s.cites):
        try:
            load(source)
        except ValueError as e:
            problems.append(f"{name}:{line}: {e}")
    return problems


def _check_section(sec: _Section, masked: list[str], name: str, load: Callable[[str], Any]) -> list[str]:
    """The problems of an in-scope section's own prose."""
    figs = [(i + 1, f) for i in sec.lines for f in numbers(masked[i])]
    if not figs:
        return []
    cites = list(dict.fromkeys(s for _, s in sec.available()))
    if not cites:
        title = f"'{sec.title}'" if sec.level else "before the first heading"
        return [f"{name}:{sec.line}: section {title} states results but cites no JSON; "
                "add <!-- figures: path.json --> under its heading"]
    try:
        found = _Leaves([(x, p, s) for s in cites for x, p in leaves(load(s))])
    except ValueError:
        return []  # reported at its marker by _check_cites
    where = ", ".join(cites)
    return [f"{name}:{n}: {f.text} is not a field of {where} ({_nearest(f, found, len(cites) > 1)})"
            for n, f in figs if not _is_field(f, found)]


def _whole_file(path: Path, lines: list[str]) -> bool:
    """models/*/README.md, or a file whose first non-blank line is <!-- figures-scope: file -->."""
    resolved = path.resolve()
    first = next((s.strip() for s in lines if s.strip()), "")
    return (resolved.name == "README.md" and resolved.parent.parent.name == "models") or first == SCOPE_FILE


def _check_card(path: Path, name: str) -> list[str]:
    """A family card (models/*/README.md beside a card.json) must be :func:`topgap.eval.card.card_markdown` of it."""
    card_file = path.parent / "card.json"
    if path.name != "README.md" or path.resolve().parent.parent.name != "models" or not card_file.is_file():
        return []
    from .card import card_markdown  # imported here: it brings torch

    try:
        expected = card_markdown(json.loads(card_file.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        return [f"{name}: its card.json cannot be rendered ({e!r}); rewrite both with topgap card"]
    if path.read_text() != expected:
        return [f"{name}: differs from the rendering of its card.json (edited by hand, or card.json changed); "
                "rewrite both with topgap card"]
    return []


def _check_file(path: Path, name: str, cache: dict[Path, Any]) -> list[str]:
    try:
        lines = path.read_text().split("\n")
    except OSError as e:
        return [f"{name}: cannot read it ({e.strerror or e})"]
    doc, load = _parse(lines), _loader(path.parent, cache)
    prose = set(i for s in doc.sections for i in s.lines)
    masked = _masked("\n".join(s if i in prose else "" for i, s in enumerate(lines))).split("\n")
    whole = _whole_file(path, lines)
    problems = _check_card(path, name) + _check_cites(doc, name, load) + _check_blocks(doc, lines, name, load)
    for sec in doc.sections:
        if sec.in_scope(whole):
            problems += _check_section(sec, masked, name, load)
    return problems


def _name(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def default_files(root: Path) -> list[Path]:
    """README.md, docs/**/*.md and models/*/README.md under `root`, those that exist."""
    found = [root / "README.md", *sorted(root.glob("docs/**/*.md")), *sorted(root.glob("models/*/README.md"))]
    return [p for p in found if p.is_file()]


def check_files(paths: list[Path], root: Path) -> list[str]:
    """Every problem of the claims blocks and figures of `paths` ('FILE:LINE: ...', FILE relative to `root`)."""
    cache: dict[Path, Any] = {}
    return [p for path in paths for p in _check_file(path, _name(path, root), cache)]


def write_blocks(path: Path) -> bool:
    """Re-render every claims block of `path` whose body differs (those whose source loads); True when rewritten."""
    text = path.read_text()
    lines = text.split("\n")
    load, out, pos = _loader(path.parent, {}), [], 0
    for b in _parse(lines).blocks:
        if b.end is None:
            continue
        try:
            body = _render(load(b.source), b.source)
        except ValueError:
            continue  # check_files reports it
        if _trim(lines[b.start + 1:b.end]) != _trim(body):
            out += [*lines[pos:b.start + 1], "", *body, ""]
            pos = b.end
    new = "\n".join([*out, *lines[pos:]])
    if new == text:
        return False
    atomic_write(path, lambda tmp: Path(tmp).write_text(new))
    return True


def run(args: argparse.Namespace) -> dict:
    root = Path(args.root)
    files = [Path(f) for f in args.files] or default_files(root)
    rewritten = [_name(p, root) for p in files if args.write and p.is_file() and write_blocks(p)]
    problems = check_files(files, root)
    if problems:
        raise ValueError(f"{len(problems)} problem(s) with the figures of the docs:\n" + "\n".join(problems))
    return {"checked": [_name(p, root) for p in files], "rewritten": rewritten}


def register(subparsers) -> None:
    """Add ``topgap claims``."""
    p = subparsers.add_parser("claims", help="check that every figure in the docs' results sections comes from a JSON",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="*", help="Markdown files (default: README.md, docs/**/*.md and models/*/README.md "
                                            "under --root)")
    p.add_argument("--root", default=".", help="the project folder: the default files, and paths in messages")
    p.add_argument("--write", action="store_true", help="re-render every claims block in place, then check")
    p.set_defaults(func=run)
