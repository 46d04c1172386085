"""The ``qgeom`` command line: one command per pipeline stage, ``--help`` on each.

Checkpoints are safetensors files whose metadata records how to rebuild the model
(``preset``, ``num_classes``, ``task``) and where they came from (``stage``, inputs, config),
so every command after ``pretrain`` needs only file names.

Options shared by several commands come from one vocabulary (:mod:`qgeom.commands.options`).
Nothing here imports torch at module level: ``qgeom --help`` and every ``--help`` answer
without it (each command imports what it computes with).
"""

from __future__ import annotations

import typer

from qgeom.commands import curvature, evaluation, figures, invariance, jobs, run, spectrum, study, training, vectors

app = typer.Typer(help="qgeom: quantization vectors of Vision Transformers — transfer, curvature, symmetries.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


# Commands defined in their own modules (one concept per module), registered here.
for _module in (training, vectors, evaluation, curvature, spectrum, invariance, run, study, figures, jobs):
    _module.register(app)


if __name__ == "__main__":  # pragma: no cover
    app()
