"""mkdocs hooks: show nbdev notebooks the way nbdev's own docs do, from their stored outputs (nothing is executed).

Before mkdocs-jupyter converts a notebook, the page is pointed at a cleaned copy in a temporary folder:
cells marked `#| hide` are dropped, the `#| ...` directive lines (`export`, `eval: false`, `default_exp`) are
taken off the top of code cells, and markdown links to another notebook (`[x](01_scalings.ipynb#anchor)`)
become links to its page (`01_scalings.html#anchor`; mkdocs.yml sets `use_directory_urls: false`).
After rendering, the table of contents is pointed at the ids the page's headings really have: mkdocs-jupyter
builds it through Markdown, whose slugs drop code spans (`## Guiders: `VanillaCFG`` → `#guiders`), while
nbconvert keeps them in the heading's id (`#guiders-vanillacfg`), so its sidebar links would go nowhere.
`ROOT_PAGES` (BENCHMARKS.md: every measured figure, with its date, machine and command) join the site from the
repository's root, after the notebooks, with the images they show.
Used by mkdocs.yml (`hooks:`); the notebooks in nbs/ and the root pages are only read.
"""
import html, json, re, shutil, tempfile
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

_DIRECTIVE = re.compile(r"^\s*#\|\s*(.*?)\s*$")
_NB_LINK = re.compile(r"\]\((?!\w+://)([^)#\s]+)\.ipynb(#[^)\s]*)?\)")
_tmp: Path | None = None
ROOT_PAGES = ("BENCHMARKS.md",)
_IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")


def _directives(src: str) -> tuple[list[str], str]:
    "The `#|` directives at the top of a cell's source, and the source without them."
    lines, found = src.splitlines(keepends=True), []
    while lines and (m := _DIRECTIVE.match(lines[0])): found.append(m.group(1)); lines.pop(0)
    return found, "".join(lines)


def clean_notebook(nb: dict) -> dict:
    "`nb` (notebook JSON) without `#| hide` cells and directive lines, its notebook links pointing at pages."
    cells = []
    for cell in nb["cells"]:
        src = "".join(cell["source"])
        if cell["cell_type"] == "code":
            found, src = _directives(src)
            if "hide" in found: continue
        elif cell["cell_type"] == "markdown": src = _NB_LINK.sub(lambda m: f"]({m.group(1)}.html{m.group(2) or ''})", src)
        cells.append(dict(cell, source=src))
    return dict(nb, cells=cells)


def on_pre_build(config):
    global _tmp
    if _tmp: shutil.rmtree(_tmp, ignore_errors=True)
    _tmp = Path(tempfile.mkdtemp(prefix="diffexplore-docs-"))


@event_priority(-100)   # after mkdocs-jupyter has wrapped the notebooks as pages
def on_files(files, config):
    for f in files:
        if f.src_uri.endswith(".ipynb"):
            out = _tmp / f.src_uri
            out.parent.mkdir(parents=True, exist_ok=True)
            nb = json.loads(Path(f.abs_src_path).read_text(encoding="utf-8"))
            out.write_text(json.dumps(clean_notebook(nb), ensure_ascii=False), encoding="utf-8")
            f.abs_src_path = str(out)
    root = Path(config.config_file_path).parent
    for name in ROOT_PAGES:   # a root page and the images it shows, at the same paths as in the repository
        files.append(File.generated(config, name, abs_src_path=str(root / name)))
        for img in dict.fromkeys(_IMAGE.findall((root / name).read_text(encoding="utf-8"))):
            files.append(File.generated(config, img, abs_src_path=str(root / img)))
    return files


_HEADING = re.compile(r'<h([1-6])[^>]*\bid="([^"]+)"[^>]*>(.*?)</h\1>', re.S)
def _words(text: str) -> str: return re.sub(r"[\W_]+", "", html.unescape(re.sub(r"<[^>]+>", "", text)).replace("¶", "")).lower()


def _flat(toc):
    for item in toc: yield item; yield from _flat(item.children)


def _subsequence(short: str, long: str) -> bool:
    it = iter(long); return all(ch in it for ch in short)


def on_page_content(content, page, config, files):
    "Give each table-of-contents entry the id of its heading: the next one of its level whose words hold the entry's in order."
    if not page.file.src_uri.endswith(".ipynb"): return content
    headings, i = [(int(level), hid, _words(text)) for level, hid, text in _HEADING.findall(content)], 0
    for item in _flat(page.toc):
        want = _words(item.title)
        j = next((k for k in range(i, len(headings)) if headings[k][0] == item.level and _subsequence(want, headings[k][2])), None)
        if j is not None: item.id, i = headings[j][1], j + 1
    return content


def on_shutdown():
    if _tmp: shutil.rmtree(_tmp, ignore_errors=True)
