"""Package metadata from settings.ini (nbdev 2 layout), without pkg_resources."""
from configparser import ConfigParser
from pathlib import Path
import shlex
import setuptools

cfg = ConfigParser(delimiters=['='])
cfg.read('settings.ini', encoding='utf-8')
cfg = cfg['DEFAULT']

def _reqs(key): return shlex.split(cfg.get(key, ''))

# The top-level configs/ (and its subfolders) ship as the package `diffexplore.configs`, so an installed
# `diffexplore train --config digits` finds them through importlib.resources; package_dir maps them for the
# editable install too.
CONFIG_PKGS = {'.'.join(('diffexplore', *d.parts)): d.as_posix()
               for d in [Path('configs'), *sorted(p for p in Path('configs').rglob('*') if p.is_dir() and p.name != '__pycache__')]}

setuptools.setup(
    name=cfg['lib_name'], version=cfg['version'], description=cfg['description'],
    long_description=open('README.md', encoding='utf-8').read(), long_description_content_type='text/markdown',
    author=cfg['author'], author_email=cfg['author_email'], license='Apache-2.0', url=cfg['git_url'],
    keywords=cfg['keywords'].split(), project_urls={'Source': cfg['git_url']},
    classifiers=['Programming Language :: Python :: 3', 'License :: OSI Approved :: Apache Software License',
                 'Topic :: Scientific/Engineering :: Artificial Intelligence'], python_requires=f">={cfg['min_python']}",
    packages=[*setuptools.find_packages(include=['diffexplore', 'diffexplore.*']), *CONFIG_PKGS],
    package_dir=CONFIG_PKGS, package_data={pkg: ['*.yaml'] for pkg in CONFIG_PKGS}, include_package_data=True, zip_safe=False,
    install_requires=_reqs('requirements'),
    extras_require={'lab': _reqs('lab_requirements'),   # the notebooks and widgets; dev has all of lab
                    'dev': list(dict.fromkeys([*_reqs('lab_requirements'), *_reqs('dev_requirements')]))},
    entry_points={'console_scripts': cfg.get('console_scripts', '').split(),
                  'nbdev': [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"]},
)
