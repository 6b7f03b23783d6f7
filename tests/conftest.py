import numpy as np
import pytest
import torch

from hsrm.features import TokenFeatures
from hsrm.models import ModelFingerprint

# One thread: the heads and tiny models here are small; extra threads only add overhead.
torch.set_num_threads(1)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing test reports as a failure, never as pytest's INTERNALERROR.

    On CPython < 3.12 the AST converter keeps its recursion depth in interpreter-wide state
    (python/cpython#106905): when another thread of the test process parses source at the same
    time (the servers the serving tests run in a thread format tracebacks, and 3.11's traceback
    module parses source to place its carets), pytest's own ``ast.parse`` of the failing test's file
    raises ``SystemError: AST constructor recursion depth mismatch`` and the whole session ends with
    exit 3 and no summary. The report is then built again with Python's native traceback, which
    parses nothing."""
    try:
        return (yield)
    except SystemError as exc:
        if "recursion depth mismatch" not in str(exc):
            raise
        option = item.config.option
        saved = option.tbstyle
        option.tbstyle = "native"
        try:
            return pytest.TestReport.from_item_and_call(item, call)
        finally:
            option.tbstyle = saved


FP = ModelFingerprint(name="synthetic", revision="r0", n_layers=4, hidden_size=16, vocab_size=64)


def tiny_demo(out, **kw):
    """``hsrm.bon.demo.DemoConfig`` of a tiny demo on the random tiny model (12 prompts x 4, 2
    splits, no training-only prompts), ``kw`` overriding."""
    from hsrm.bon.demo import DemoConfig

    base = dict(model="tiny:0", n_prompts=12, n=4, folds=2, head_layers="all", n_boot=20)
    return DemoConfig(**{"out": str(out), **base, "train_prompts": 0, **kw})


def make_features(n_prompts=40, per_prompt=6, layers=(0, 1, 2, 3, 4), d=16, seed=0, signal=2.0):
    """Synthetic answers whose correctness is written along one direction of layer 2."""
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    fp = ModelFingerprint(name="synthetic", revision="r0", n_layers=4, hidden_size=d, vocab_size=64)
    xs, ys, groups, lps = [], [], [], []
    # One fixed direction for every seed, so train and test sets share the signal.
    direction = torch.randn(d, generator=torch.Generator().manual_seed(1234))
    direction /= direction.norm()
    for p in range(n_prompts):
        for _ in range(per_prompt):
            y = int(rng.random() < 0.5)
            T = int(rng.integers(2, 7))
            x = torch.randn(T, len(layers), d, generator=g)
            if 2 in layers:
                x[:, layers.index(2)] += (signal if y else -signal) * direction
            xs.append(x)
            ys.append(y)
            groups.append(f"p{p}")
            lps.append(torch.randn(T, generator=g) - 1.0)
    return TokenFeatures.from_tensors(xs, layers, fp, lps), np.array(ys), np.array(groups)


@pytest.fixture
def synth():
    return make_features()


@pytest.fixture(scope="session")
def embedded_lm():
    """The embedded SmolLM2-135M-Instruct (converted once from its GGUF file, then cached)."""
    from hsrm.models import load_model

    return load_model()


@pytest.fixture(scope="session")
def tiny_lm():
    from hsrm.models import tiny_model

    return tiny_model(seed=0)
