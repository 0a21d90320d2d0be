"""Start-up: the classical registration path of `vislab change` loads neither torch nor scipy.signal."""

import numpy as np


def test_hann_window_equals_scikit_image_without_scipy_signal():
    """The NumPy Hann window equals skimage.filters.window("hann", shape) (whose import pulls scipy.signal)."""
    from skimage.filters import window

    from vislab.ops.registration import _hann_cached

    for shape in [(128, 128), (96, 128), (64, 65), (33, 100), (7, 9)]:
        np.testing.assert_allclose(_hann_cached(shape), window("hann", shape), atol=3e-7, rtol=0)


def test_classical_registration_imports_neither_torch_nor_scipy_signal():
    import subprocess
    import sys

    code = ("import sys, numpy as np; from vislab.ops import phase_correlation; "
            "a = np.random.default_rng(0).random((64, 64)); phase_correlation(a, np.roll(a, 2, 1)); "
            "print(sorted(m for m in ('torch', 'torchvision', 'scipy.signal') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
