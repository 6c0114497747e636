"""The audit options, defined once: the CLI (``torchbp audit --dtype ...``) and the pytest plugin
(``--torchbp-dtype ...``) both build their flags from ``OPTIONS``. No torch import here."""
from __future__ import annotations

from dataclasses import dataclass

DTYPES = ("float64", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class Option:
    name: str                 # the audit keyword / flag stem: --<name>, --torchbp-<name>
    help: str
    default: object = None
    type: type = str
    choices: tuple | None = None
    flag: bool = False        # a store_true switch
    metavar: str | None = None

    def kwargs(self) -> dict:
        """Keyword arguments for argparse's add_argument (and pytest's addoption)."""
        if self.flag:
            return {"action": "store_true", "default": bool(self.default), "help": self.help,
                    "dest": self.name.replace("-", "_")}
        kw = {"default": self.default, "type": self.type, "help": self.help, "dest": self.name.replace("-", "_")}
        if self.choices:
            kw["choices"] = self.choices
        if self.metavar:
            kw["metavar"] = self.metavar
        return kw


OPTIONS = (
    Option("dtype", "dtype of the audit (default float64: a float64 copy of the model, the strongest "
                    "check); below float64 each gradient is held against a float64 oracle", choices=DTYPES),
    Option("device", "device of the audit, e.g. cpu, cuda, cuda:1 (default: the model's)"),
    Option("seed", "seed of the random numbers both passes share (dropout masks, the default loss's v)",
           default=0, type=int, metavar="N"),
    Option("repeat", "run the subject's backward N more times and mark gradients that are not bitwise "
                     "reproducible", default=0, type=int, metavar="N"),
    Option("oracle", "below float64: always run the float64 oracle (default), or auto: only when the "
                     "subject differs from native by more than floor(dtype)", default="always",
           choices=("always", "auto")),
    Option("oracle-device", "where the float64 oracle runs, e.g. cpu to judge a GPU against a computation "
                            "sharing none of its kernels (default: the audit's device)", metavar="DEVICE"),
    Option("full", "show every row, not only failing ones, on big models", flag=True),
    Option("json", "write the report as JSON to PATH", metavar="PATH"),
    Option("markdown", "write the report as Markdown to PATH (e.g. $GITHUB_STEP_SUMMARY)", metavar="PATH"),
)
BY_NAME = {o.name: o for o in OPTIONS}


def add_options(add, prefix: str = "--", names=None) -> None:
    """``add`` is argparse's ``parser.add_argument`` or pytest's ``group.addoption``; with
    ``prefix="--torchbp-"`` the dests become ``torchbp_<name>``."""
    for o in OPTIONS:
        if names is not None and o.name not in names:
            continue
        kw = o.kwargs()
        if prefix != "--":
            kw["dest"] = (prefix.strip("-") + "_" + o.name).replace("-", "_")
        add(prefix + o.name, **kw)


def audit_kwargs(values: dict) -> dict:
    """The torchbp.audit keywords among parsed option values (dtype as a torch dtype)."""
    import torch
    out = {}
    if values.get("dtype"):
        out["dtype"] = getattr(torch, values["dtype"])
    for k in ("device", "seed", "repeat", "full", "oracle", "oracle_device"):
        if values.get(k) is not None:
            out[k] = values[k]
    return out
