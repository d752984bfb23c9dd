"""The layer's forward and gradients against a PyTorch reference's, by the norm-wise
relative error max|lib - ref| / max|ref| (shared by the model-family tests)."""
import numpy as np


def relative_error(lib, ref):
    ref = ref.detach().numpy() if hasattr(ref, "detach") else np.asarray(ref)
    return np.max(np.abs(np.asarray(lib, np.float64) - ref)) / np.max(np.abs(ref))


def assert_matches(tol, y, dx, grads, y_ref, x_ref, params):
    """y and dx against y_ref and x_ref.grad; grads[name] against params[name].grad for
    every name of params (the reference's leaf tensors, keyed by the layer's names)."""
    assert relative_error(y, y_ref) < tol, "y"
    assert relative_error(dx, x_ref.grad) < tol, "dx"
    for name, leaf in params.items():
        assert relative_error(grads[name], leaf.grad) < tol, name
