"""MkDocs hooks (mkdocs.yml `hooks:`): links from docs/ to the repository's other files, and the changelog's commits.

The pages link to files outside docs/ as `../path` (which works when the Markdown is read in the repository, on
any forge). MkDocs serves only docs/, so here:

- an image outside docs/ (`![...](../reports/bias-table/differences.png)`) is copied into the site under `repo/`
  and the link points there;
- any other file outside docs/ (`[card](../models/oxford-pet-lite0/README.md)`) becomes its path as code, the link
  text kept (no repository URL is configured; with `repo_url` set in mkdocs.yml it links to the file there);
- `<!-- commits by issue -->` in a page becomes `git log --oneline`, grouped by the issue each subject names.

A link to a file that does not exist is left alone, so `mkdocs build --strict` still fails on it.
"""
from __future__ import annotations

import html
import posixpath
import re
import subprocess
from collections import defaultdict
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
IMAGES = {".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp"}
LINK = re.compile(r"(!?)\[([^\]\n]*)\]\((\.\./[^)\s#]+)(#[^)\s]*)?\)")
COMMITS = "<!-- commits by issue -->"
ISSUE = re.compile(r"\bissues? (\d+)(?:(?:, | and )(\d+))?", re.I)


def _outside(page_src: str, target: str) -> str | None:
    """The repository path of `target` (relative to the page docs/`page_src`) when it is a file outside docs/."""
    rel = posixpath.normpath(posixpath.join("docs", posixpath.dirname(page_src), target))
    if rel.startswith("../") or rel.startswith("docs/") or not (ROOT / rel).is_file():
        return None
    return rel


def on_files(files, config):
    """Register every image outside docs/ that a page links to, copied to site/repo/<path>."""
    seen = set()
    for f in list(files.documentation_pages()):
        for m in LINK.finditer(Path(f.abs_src_path).read_text()):
            rel = _outside(f.src_uri, m[3])
            if m[1] and rel and Path(rel).suffix.lower() in IMAGES and rel not in seen:
                seen.add(rel)
                copy = File(f"repo/{rel}", str(ROOT), config["site_dir"], config["use_directory_urls"])
                copy.abs_src_path = str(ROOT / rel)  # found as repo/<path>, the name the rewritten link uses
                files.append(copy)
    return files


def _commits() -> str:
    try:
        log = subprocess.run(["git", "log", "--oneline", "--no-decorate"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "*(not a git checkout: the commits are in `git log --oneline`)*"
    groups: dict[int | None, list[str]] = defaultdict(list)
    for line in log.splitlines():
        sha, _, subject = line.partition(" ")
        issues = {int(n) for m in ISSUE.finditer(subject) for n in m.groups() if n}
        for issue in sorted(issues) or [None]:
            groups[issue].append(f"- `{sha}` {html.escape(subject)}")
    out = []
    for issue in sorted((i for i in groups if i is not None), reverse=True) + [None]:
        if groups.get(issue):
            title = f"Issue {issue}" if issue is not None else "Commits that name no issue"
            out += [f"### {title} ({len(groups[issue])})", "", *groups[issue], ""]
    return "\n".join(out)


def on_page_markdown(markdown, page, config, files):
    def link(m: re.Match) -> str:
        rel = _outside(page.file.src_uri, m[3])
        if rel is None:
            return m[0]
        if m[1] and Path(rel).suffix.lower() in IMAGES:
            depth = page.file.src_uri.count("/")
            return f"![{m[2]}]({'../' * depth}repo/{rel})"
        if config.get("repo_url"):
            return f"[{m[2]}]({config['repo_url'].rstrip('/')}/blob/main/{rel})"
        return f"`{rel}`" if m[2].strip("`") == rel else f"{m[2]} (`{rel}`)"

    markdown = LINK.sub(link, markdown)
    if COMMITS in markdown:
        markdown = markdown.replace(COMMITS, _commits())
    return markdown
