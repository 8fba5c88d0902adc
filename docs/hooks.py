"""mkdocs hooks: the options reference generated from the schemas, and bench/results/ served with the site.

The pictures of docs/pictures.py are drawn at build time as `pictures/<name>`. `<!-- options GROUP -->` in a page becomes `dimat.reference.group_reference(GROUP)` (`<!-- options top -->`: the
top-level keys and the eval/run/budget/final_merge sections), so every option, key, type, default and meaning
comes from `dimat/config.py` and `conf/` and cannot drift. Every file of bench/results/ joins the site as
`results/<name>`, so pages show the benches' own plots (their tables are included with snippets:
`--8<-- "bench/results/NAME.md"`).
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
MARK = re.compile(r"<!-- options (\w+) -->")


def on_files(files, config):
    import sys

    sys.path.insert(0, str(ROOT / "docs"))
    import pictures  # drawn by dimat's own code at build time

    for name, draw in pictures.PICTURES.items():
        files.append(File.generated(config, f"pictures/{name}", content=draw()))
    results = ROOT / "bench" / "results"
    for path in sorted(results.rglob("*")):
        if path.is_file() and path.suffix in (".png", ".svg"):
            rel = path.relative_to(results).as_posix()
            files.append(File.generated(config, f"results/{rel}", abs_src_path=str(path)))
    return files


def on_page_markdown(markdown, page, config, files):
    from dimat import reference

    def sub(m):
        group = m.group(1)
        if group == "top":
            return reference.top_level()
        return reference.presets() if group == "presets" else reference.group_reference(group)

    return MARK.sub(sub, markdown)
