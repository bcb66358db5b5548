"""The docs site in a real browser: every page, every image, every same-site link.

Builds the site from `nbs/` with `mkdocs build` into a temporary folder (or takes a built one from
`DIFFEXPLORE_DOCS_SITE`, as `.ci/run` does after its docs step), serves it with `http.server` on 127.0.0.1 and a
free port, and opens every page in Debian's Chromium through Playwright. It fails, naming the page, on:
- a same-site request answered 4xx/5xx or failing (a missing stylesheet, script or image);
- an image the browser could not decode (`naturalWidth == 0`);
- a same-site link whose page is missing (every `href` on every page is fetched; `#anchors` must exist there);
- a notebook page without a figure (an `<img>`, or an inline SVG, among the notebook's outputs), or a notebook
  without a page;
- a navigation that does not follow the notebooks' file order (index first, then `00_core` … `18_…`);
- a code cell that shows nbdev's `#|` directives (docs/mkdocs_hooks.py drops `#| hide` cells and those lines).
Skipped only when chromium or playwright is not installed; in CI (`DIFFEXPLORE_REQUIRE_ALL=1`) it must run.
"""
import os, subprocess, sys, threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.error import HTTPError
from urllib.parse import urldefrag, urlsplit
from urllib.request import urlopen

import pytest

from _browser import CHROMIUM, CHROMIUM_ARGS, needs_browser, sync_playwright
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docs"))
from mkdocs_hooks import ROOT_PAGES  # noqa: E402  (the pages the site takes from the repository's root)

REPO = Path(__file__).resolve().parents[1]
NBS = REPO / "nbs"

pytestmark = needs_browser


def notebook_pages() -> dict[str, str]:
    "Page file -> notebook, for every notebook the site publishes (nbs/*.ipynb but `_scratch` ones), in file order."
    nbs = sorted(p.name for p in NBS.glob("*.ipynb") if not p.name.startswith("_"))
    return {nb.removesuffix(".ipynb") + ".html": nb for nb in ["index.ipynb", *(n for n in nbs if n != "index.ipynb")]}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    "A built site: `DIFFEXPLORE_DOCS_SITE` if set, else a fresh `mkdocs build` of nbs/ (strict) into a temp folder."
    if os.environ.get("DIFFEXPLORE_DOCS_SITE"):
        built = Path(os.environ["DIFFEXPLORE_DOCS_SITE"]).resolve()
        assert (built / "index.html").is_file(), f"DIFFEXPLORE_DOCS_SITE={str(built)!r} holds no built site (no index.html)"
        return built
    out = tmp_path_factory.mktemp("docs") / "site"
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(out)], cwd=REPO,
                       capture_output=True, text=True, env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))
    assert r.returncode == 0, f"mkdocs build failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return out


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args): pass


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):   # the browser dropping a connection it no longer needs is fine
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)): super().handle_error(request, client_address)


@pytest.fixture(scope="module")
def base_url(site):
    "http.server serving `site` on 127.0.0.1 at a free port (port 0: the OS picks); shut down after the module."
    server = _QuietServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try: yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown(); server.server_close(); thread.join(timeout=10)


def _status(url: str) -> int:
    try:
        with urlopen(url, timeout=10) as r: return r.status
    except HTTPError as e: return e.code


# What each page reports back: its images, links, the ids anchors can point at, the notebook's output images.
PAGE_FACTS = """() => ({
  images: [...document.images].map(i => ({src: (i.currentSrc || i.src).slice(0, 120), ok: i.complete && i.naturalWidth > 0})),
  links: [...document.querySelectorAll('a[href], link[href]')].map(a => a.href),
  ids: [...document.querySelectorAll('[id]')].map(e => e.id),
  outputImages: document.querySelectorAll('.jupyter-wrapper .jp-OutputArea-output img, .jupyter-wrapper .jp-RenderedSVG svg').length,
  nav: [...document.querySelectorAll('.md-nav--primary .md-nav__link[href]')].map(a => a.getAttribute('href')),
  directives: [...document.querySelectorAll('.jupyter-wrapper .jp-InputArea pre')].map(p => p.innerText)
              .filter(t => /^\s*#\|/m.test(t)).map(t => t.slice(0, 80)),
})"""


def test_docs_site_in_browser(site, base_url):
    pages = notebook_pages()
    problems = [f"{nb}: no page {page} in the site" for page, nb in pages.items() if not (site / page).is_file()]
    to_visit = sorted({p.relative_to(site).as_posix() for p in site.rglob("*.html")} - {"404.html"})
    facts, bad_requests = {}, []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on("response", lambda r: r.url.startswith(base_url) and r.status >= 400 and bad_requests.append((page.url, f"{r.status} {r.url}")))
            page.on("requestfailed", lambda r: r.url.startswith(base_url) and "ERR_ABORTED" not in (r.failure or "")   # not: left the page
                    and bad_requests.append((page.url, f"failed ({r.failure}) {r.url}")))
            for rel in to_visit:
                resp = page.goto(base_url + rel, wait_until="load")
                if resp is None or resp.status != 200: problems.append(f"{rel}: answered {resp and resp.status}")
                facts[rel] = page.evaluate(PAGE_FACTS)
        finally:
            browser.close()
    problems += [f"{u.removeprefix(base_url) or 'index'}: {what.replace(base_url, '/')}" for u, what in bad_requests]

    checked = {}
    for rel, f in facts.items():
        problems += [f"{rel}: image not shown: {i['src'].removeprefix(base_url)}" for i in f["images"] if not i["ok"]]
        for link in f["links"]:
            url, frag = urldefrag(link)
            if not url.startswith(base_url): continue                   # GitHub, CDNs: not this site
            if url not in checked: checked[url] = _status(url)
            if checked[url] != 200: problems.append(f"{rel}: link {link.removeprefix(base_url)} answered {checked[url]}")
            target = url.removeprefix(base_url).split("?")[0] or "index.html"
            if frag and target in facts and frag not in facts[target]["ids"]:
                problems.append(f"{rel}: link {link.removeprefix(base_url)}: no id {frag!r} on {target}")
        problems += [f"{rel}: shows nbdev's directives (a `#| hide` cell, or `#|` lines the docs hooks strip): {t!r}" for t in f["directives"]]
        if rel in pages and f["outputImages"] == 0:
            problems.append(f"{pages[rel]}: its page shows no figure (no image among the stored outputs; run docs/execute_notebooks.py)")

    nav = [urlsplit(h).path.rsplit("/", 1)[-1] or "index.html" for h in facts.get("index.html", {}).get("nav", [])]
    nav = list(dict.fromkeys(nav))                                        # the current page is listed twice
    want = [*pages, *(Path(r).with_suffix(".html").name for r in ROOT_PAGES)]   # the notebooks, then BENCHMARKS
    if nav != want: problems.append(f"navigation {nav} is not the notebooks' order then the root pages {want}")
    problems = list(dict.fromkeys(problems))                              # a link in the sidebar and the page: once
    assert not problems, f"{len(problems)} problems in the docs site:\n" + "\n".join(problems)
    assert len(facts) >= len(pages) and len(checked) >= len(pages), (len(facts), len(checked))   # it looked at them all
