"""README's commands hold: every `diffexplore train` config and override it shows is valid (without training), it
shows how to build the docs site into a git-ignored folder, and it names each test file that skips without Chromium
or Fashion-MNIST (`.ci/run` checks that those are the only skips)."""
import re, shlex, subprocess
from pathlib import Path
from diffexplore.cli import load_config, build_engine, build_data, check_compatible, _parse_args

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[list[str]]:
    "Each command in README's bash blocks as words, continuation lines joined, comments dropped."
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return [words for block in blocks for cmd in block.replace("\\\n", " ").splitlines() if (words := shlex.split(cmd, comments=True))]


def readme_train_commands() -> list[list[str]]:
    "Each `diffexplore train --config ...` command in README's bash blocks (the words after `train`)."
    return [w[2:] for w in readme_commands() if w[:2] == ["diffexplore", "train"] and "--config" in w]


def test_readme_train_commands_build():
    cmds = readme_train_commands()
    assert len(cmds) >= 3, cmds   # the main job, the v-prediction variant, ...
    for words in cmds:
        args = _parse_args(["train", *words])   # the CLI's own parser: options and overrides as it reads them
        config = args.config
        cfg = load_config(ROOT / config if (ROOT / config).is_file() else config, args.overrides)   # a path, or a shipped name
        if "fashion" in config: continue   # needs Debian's Fashion-MNIST files; its config is built by its own tests
        check_compatible(build_engine(cfg), build_data(cfg))


def test_readme_docs_command_builds_into_an_ignored_folder():
    "README shows `mkdocs build`; the folder it writes (`-d`, else mkdocs.yml's `site_dir`) is git-ignored."
    cmds = [w for w in readme_commands() if w[:2] == ["mkdocs", "build"]]
    assert cmds, "README shows no `mkdocs build` command for the docs site"
    for words in cmds:
        out = next((b for a, b in zip(words, words[1:]) if a in ("-d", "--site-dir")), None)
        out = out or re.search(r"^site_dir:\s*(\S+)", (ROOT / "mkdocs.yml").read_text(), flags=re.M).group(1)
        r = subprocess.run(["git", "check-ignore", "-q", f"{out.rstrip('/')}/index.html"], cwd=ROOT)
        assert r.returncode == 0, f"README's `{' '.join(words)}` writes {out}/, which git does not ignore"


def test_readme_names_the_tests_that_skip():
    "Each test file with a skip for a missing Chromium or Fashion-MNIST is named in README, where the skip is explained."
    readme = (ROOT / "README.md").read_text()
    skipping = [p.name for p in sorted((ROOT / "tests").glob("test_*.py"))
                if re.search(r"skipif\([^\n]*(chromium|CHROMIUM|FASHION)|^pytestmark = needs_browser", p.read_text(), flags=re.M)]
    assert {"test_browser.py", "test_docs_site.py", "test_data.py"} <= set(skipping), skipping
    assert not [n for n in skipping if n not in readme], f"README does not name {[n for n in skipping if n not in readme]}"


def test_readme_study_and_posthoc_commands_parse():
    "README's `diffexplore study` and `diffexplore posthoc-ema` lines parse, and the study config they name loads."
    from diffexplore.study import load_study_config
    cmds = [w for w in readme_commands() if w[:2] in (["diffexplore", "study"], ["diffexplore", "posthoc-ema"])]
    assert {w[1] for w in cmds} == {"study", "posthoc-ema"}, cmds
    for words in cmds:
        args = _parse_args(words[1:])
        if args.cmd == "study": assert len(load_study_config(ROOT / args.config).recipes) == 7
