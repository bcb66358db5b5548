"README's `diffexplore train` commands build: every config and override they show is valid (without training)."
import re, shlex
from pathlib import Path
from diffexplore.cli import load_config, build_engine, build_data, check_compatible, _parse_args

ROOT = Path(__file__).resolve().parents[1]


def readme_train_commands() -> list[list[str]]:
    "Each `diffexplore train --config ...` command in README's bash blocks, continuation lines joined, comments dropped."
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    cmds = []
    for block in blocks:
        for cmd in block.replace("\\\n", " ").splitlines():
            words = shlex.split(cmd, comments=True)
            if words[:2] == ["diffexplore", "train"] and "--config" in words: cmds.append(words[2:])
    return cmds


def test_readme_train_commands_build():
    cmds = readme_train_commands()
    assert len(cmds) >= 3, cmds   # the main job, the v-prediction variant, ...
    for words in cmds:
        args = _parse_args(["train", *words])   # the CLI's own parser: options and overrides as it reads them
        config = args.config
        cfg = load_config(ROOT / config, args.overrides)
        if "fashion" in config: continue   # needs Debian's Fashion-MNIST files; its config is built by its own tests
        check_compatible(build_engine(cfg), build_data(cfg))
