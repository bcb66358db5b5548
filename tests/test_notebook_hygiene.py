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
