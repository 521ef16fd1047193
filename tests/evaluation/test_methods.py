import numpy as np
import pytest

from clinfuse.errors import ClinfuseInputError
from clinfuse.evaluation import methods
from clinfuse.evaluation.methods import (
    MethodOutput,
    available_methods,
    register_method,
    resolve_method,
    unpack_output,
)


def test_every_baseline_is_available():
    names = available_methods()
    for n in ["average", "weighted", "max", "laplacian", "wavelet", "composite"]:
        assert n in names


def test_unknown_method_lists_the_available_ones():
    with pytest.raises(ClinfuseInputError, match="average"):
        resolve_method("nope")


def test_baseline_options_are_checked_before_the_run():
    name, fn = resolve_method("weighted", mri_weight=0.5)
    assert name == "weighted" and fn.keywords == {"mri_weight": 0.5}
    with pytest.raises(ClinfuseInputError, match="checkpoint"):
        resolve_method("average", checkpoint="x.pt")


def test_register_method_hook(monkeypatch):
    monkeypatch.setattr(methods, "_REGISTRY", dict(methods._REGISTRY))
    seen = {}

    def factory(checkpoint=None, preset="stroke"):
        seen.update(checkpoint=checkpoint, preset=preset)
        return lambda prepared: MethodOutput(np.zeros(prepared.shape), None)

    register_method("toy", factory)
    with pytest.raises(ValueError, match="already registered"):
        register_method("toy", factory)
    name, fn = resolve_method("toy", checkpoint="m.pt")
    assert name == "toy" and seen == {"checkpoint": "m.pt", "preset": "stroke"}
    with pytest.raises(ClinfuseInputError):
        resolve_method("toy", steps=3)


def test_callable_method_and_unpack():
    def mine(prepared):
        return prepared

    assert resolve_method(mine) == ("mine", mine)
    arr = np.ones((2, 2))
    f, les = unpack_output(arr)
    assert f is arr and les is None
    f, les = unpack_output(MethodOutput(arr, arr > 0))
    assert les.dtype == bool

    class Result:  # e.g. the pipeline's FusionResult: .fused and .lesion_prob
        fused = arr
        lesion_prob = arr * 0.2

    f, les = unpack_output(Result())
    assert np.all(les == 0.2)
    with pytest.raises(TypeError):
        unpack_output([1, 2])
