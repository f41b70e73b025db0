"""The `repirl` command. The one place that sees both sides: sub-commands come from trainer/ and server/, imported
lazily so `repirl --help` stays fast and `server/` never imports `trainer/` (or the reverse)."""

from __future__ import annotations

import importlib
import os

import typer

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded at run time
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

app = typer.Typer(
    name="repirl",
    help="Train process reward models with rePIRL and serve them next to a policy.\n\n"
    "Typical flow: `repirl bootstrap` (tiny demo policy + PRM), `repirl train --config configs/demo.yaml`, "
    "`repirl eval`, `repirl serve`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="show vLLM's and transformers' INFO logs "
                                       "(default: warnings only; also REPIRL_LOG_LEVEL=info)")) -> None:
    """Train process reward models with rePIRL and serve them next to a policy."""
    if verbose:
        os.environ["REPIRL_LOG_LEVEL"] = "info"


# (module, function) pairs; a module that is not there yet (a later issue) simply adds no command.
_COMMANDS = {
    "bootstrap": ("trainer.bootstrap_cli", "bootstrap"),
    "train": ("trainer.train_cli", "train"),
    "eval": ("trainer.eval_cli", "eval_app"),  # a group: its callback is `repirl eval`, plus `eval processbench`
    "calibrate": ("trainer.calibrate_cli", "calibrate"),
    "sweep": ("trainer.sweep_cli", "sweep"),
    "serve": ("server.cli", "serve"),
}

for _name, (_module, _func) in _COMMANDS.items():
    try:
        _mod = importlib.import_module(_module)
    except ModuleNotFoundError as _e:
        if _e.name != _module:  # a real import error inside an existing module must surface
            raise
        continue
    _obj = getattr(_mod, _func)
    if isinstance(_obj, typer.Typer):
        app.add_typer(_obj, name=_name)
    else:
        app.command(_name)(_obj)


from repirl.prm_cli import app as _prm_app  # noqa: E402  (typer only: keeps `repirl --help` light)

app.add_typer(_prm_app, name="prm")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
