"Committed notebooks carry no saved widget state (STYLE.md, notebook hygiene): not in metadata, not in outputs."
import json
from pathlib import Path

import pytest

NBS = sorted((Path(__file__).resolve().parents[1] / "nbs").glob("*.ipynb"))
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def widget_state_locations(nb: dict) -> list:
    "Where `nb` (a parsed .ipynb) holds saved widget state: 'metadata', 'cell N metadata' or 'cell N outputs'."
    found = ["metadata"] if WIDGET_STATE in json.dumps(nb.get("metadata", {})) else []
    for i, cell in enumerate(nb.get("cells", [])):
        for part in ("metadata", "outputs"):
            if WIDGET_STATE in json.dumps(cell.get(part, {})): found.append(f"cell {i} {part}")
    return found


def test_there_are_notebooks():
    assert len(NBS) >= 1


@pytest.mark.parametrize("path", NBS, ids=[p.name for p in NBS])
def test_no_saved_widget_state(path):
    where = widget_state_locations(json.loads(path.read_text()))
    assert not where, f"{path.name} carries saved widget state in {', '.join(where)}: clear it (Edit > Clear Outputs, " \
                      f"and remove metadata.widgets), then run nbdev_clean"


def test_detector_finds_state_in_metadata_and_outputs():
    clean = {"metadata": {"kernelspec": {"name": "python3"}},
             "cells": [{"cell_type": "code", "metadata": {}, "outputs": [{"output_type": "display_data", "data": {"text/plain": "x"}}]}]}
    assert widget_state_locations(clean) == []
    saved = json.loads(json.dumps(clean))
    saved["metadata"]["widgets"] = {WIDGET_STATE: {"state": {}, "version_major": 2, "version_minor": 0}}
    saved["cells"][0]["outputs"][0]["data"][WIDGET_STATE] = {"state": {}}
    assert widget_state_locations(saved) == ["metadata", "cell 0 outputs"]


# --- The book: committed outputs (issue "the front door"). `python docs/execute_notebooks.py` writes them. ---
import re, sys

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docs"))
from execute_notebooks import EVAL_FALSE, image_count   # the book's own rules: what it skips, what a picture is
# Documents a reader of the repository does not have: the design source, internal bug-case numbers, shared notes.
OUTSIDE_REFS = re.compile(r"\.\./shared|\bbugcases\b|design-space\.md|\bSTYLE\.md|\bthe seed\b|替换点|\bBC ?\d+\b|"
                          r"design source", re.I)


def code_outputs(nb: dict):
    "(cell index, output) for every output of every code cell."
    return [(i, o) for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code" for o in c.get("outputs", [])]


def book_problems(nb: dict) -> list:
    "What keeps a parsed notebook from reading as a book: no picture, errors, stderr spam, stale or outside outputs."
    outs = code_outputs(nb)
    found = [] if image_count(nb) else ["no image output"]
    found += [f"cell {i}: error output ({o.get('ename')})" for i, o in outs if o["output_type"] == "error"]
    found += [f"cell {i}: stderr output (warnings or progress bars)" for i, o in outs
              if o["output_type"] == "stream" and o.get("name") == "stderr"]
    found += [f"cell {i}: an `#| eval: false` cell with outputs" for i, c in enumerate(nb["cells"])
              if c["cell_type"] == "code" and EVAL_FALSE.search("".join(c["source"])) and c.get("outputs")]
    for i, c in enumerate(nb["cells"]):
        m = OUTSIDE_REFS.search("".join(c["source"]))
        if m: found.append(f"cell {i}: refers to a document outside the repository ({m.group(0)!r})")
    return found


@pytest.mark.parametrize("path", NBS, ids=[p.name for p in NBS])
def test_notebook_reads_as_a_book(path):
    problems = book_problems(json.loads(path.read_text()))
    assert not problems, f"{path.name}: " + "; ".join(problems) + \
        " (re-run it with `python docs/execute_notebooks.py " + path.stem + "`, see README)"


def test_book_detector_finds_each_problem():
    png = {"output_type": "display_data", "data": {"image/png": "iVBOR"}, "metadata": {}}
    good = {"metadata": {}, "cells": [{"cell_type": "markdown", "metadata": {}, "source": ["EDM (Karras et al. 2022, Table 1)"]},
                                      {"cell_type": "code", "metadata": {}, "outputs": [png], "source": ["fig"]}]}
    assert book_problems(good) == []
    bad = json.loads(json.dumps(good))
    bad["cells"][1]["outputs"] = [{"output_type": "error", "ename": "ValueError", "evalue": "x", "traceback": []},
                                  {"output_type": "stream", "name": "stderr", "text": "UserWarning"}]
    bad["cells"][0]["source"] = ["as the seed says (BC12)"]
    bad["cells"].append({"cell_type": "code", "metadata": {}, "source": ["#| eval: false\ntrain()"], "outputs": [png]})
    assert book_problems(bad) == ["cell 1: error output (ValueError)", "cell 1: stderr output (warnings or progress bars)",
                                  "cell 2: an `#| eval: false` cell with outputs",
                                  "cell 0: refers to a document outside the repository ('the seed')"]
    assert "no image output" in book_problems({"metadata": {}, "cells": []})
