"""The run configs (sgm-style YAML) that ship with diffexplore, read with `importlib.resources.files("diffexplore.configs")`.

This folder is the package `diffexplore.configs` (setup.py maps it), in the wheel and in the editable install."""
