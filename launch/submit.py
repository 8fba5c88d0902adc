"""Entry for `ray submit launch/cluster.yaml launch/submit.py -- <hydra overrides>`.

`ray submit` copies only this script to the head node; the repository itself
was shipped by the cluster YAML's `file_mounts` and installed by its
`setup_commands`. The run joins the running cluster (`backend.address=auto`)
unless an override says otherwise.
"""

from __future__ import annotations

import sys


def overrides_for(argv: list[str]) -> list[str]:
    """The Hydra overrides to run with: the user's, joining the cluster unless told otherwise."""
    overrides = [a for a in argv if a != "--"]
    if not any(a.startswith("backend.address=") for a in overrides):
        overrides.append("backend.address=auto")
    return overrides


def main(argv: list[str]) -> None:
    sys.argv = ["dimat", *overrides_for(argv)]
    from dimat.cli import main as dimat_main

    dimat_main()


if __name__ == "__main__":
    main(sys.argv[1:])
