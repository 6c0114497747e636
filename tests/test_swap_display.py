"""What a swapped model shows: print(model) marks the twins, the swap warning groups modules by class, and
swap / unswap refuse what is not a module in the same way."""
import io
import warnings

import pytest
import torch

import torchbp


class Scale(torch.nn.Module):  # owns a parameter, has no twin
    def __init__(self):
        super().__init__()
        self.s = torch.nn.Parameter(torch.ones(3))

    def forward(self, x):
        return x * self.s


def test_print_marks_twins_and_keeps_state_dict_and_isinstance():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), Scale())
    native_text, keys = str(model), list(model.state_dict())
    torchbp.swap(model)
    text = str(model)
    assert "Linear[δ](in_features=4, out_features=3, bias=True)" in text
    assert "Tanh[δ]()" in text and text.startswith("Sequential[δ](")
    assert "Scale()" in text and "Scale[δ]" not in text        # left native: shown as native
    assert list(model.state_dict()) == keys and isinstance(model[0], torch.nn.Linear)
    assert type(model[0]).__name__ == "Linear"
    torchbp.unswap(model)
    assert str(model) == native_text


class MyBilinear(torch.nn.Bilinear):  # a user's subclass with its own forward: left native
    def forward(self, a, b):
        return super().forward(a, b) * 2


def test_swap_warning_grouped_by_class():
    model = torch.nn.Sequential(*[Scale() for _ in range(6)], torch.nn.Linear(3, 3),
                                torch.nn.Sequential(MyBilinear(3, 3, 3)))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        torchbp.swap(model)
    (msg,) = [str(x.message) for x in w if "left native" in str(x.message)]
    lines = msg.splitlines()
    assert lines[0] == "torchbp.swap: 7 module(s) left native (no δ twin; their gradients stay native):"
    assert lines[1] == "  Scale ×6: 0, 1, 2, 3, … (+2 more)"
    assert lines[2] == "  MyBilinear ×1: 7.0"
    assert len(lines) == 3


@pytest.mark.parametrize("fn", ["swap", "unswap"])
@pytest.mark.parametrize("bad", [None, 3, "model"])
def test_swap_and_unswap_refuse_non_modules_alike(fn, bad):
    with pytest.raises(TypeError, match=rf"torchbp.{fn} expects a torch.nn.Module, got {type(bad).__name__}"):
        getattr(torchbp, fn)(bad)


def test_saved_state_dict_of_swapped_model_loads_into_native():
    model = torchbp.swap(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh()))
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    native = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh())
    native.load_state_dict(torch.load(buf))
    assert torch.equal(native[0].weight, model[0].weight)
    whole = io.BytesIO()
    torch.save(torchbp.unswap(model), whole)   # unswapped first: only torch classes are pickled
    assert b"torchbp" not in whole.getvalue()
