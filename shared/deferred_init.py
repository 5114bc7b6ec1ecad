"""Building a Keras model whose weights are about to be loaded, without its initial values.

Keras gives every variable its initializer's values as a layer is built: for sd-v1's
860M-parameter UNet that is seconds of random numbers on a CPU and a 3.4 GB tensor, all
overwritten a moment later by the loaded weights. Under `deferred_initialisation()` the
model is built inside Keras's own StatelessScope (what Keras builds under for JAX),
told not to initialise on exit, so every variable is left without a value (Keras lists
it as uninitialised); `fill` then creates each one straight from its loaded tensor, and
`initialise_unfilled` gives whatever no file filled (nothing, for a complete file) its
ordinary initial values, leaving Keras's list empty.

Only the load path builds this way: random weights (`SDSERVE_WEIGHTS=random`) are built
as before, so they stay the same numbers in every process.

Keras's deferred initialisation is internal API (`keras.src`, as is keras-cv's, which
the families use): tests/unit/shared/test_deferred_init.py pins what this module relies
on.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import keras

# Keras's per-thread list of variables built without a value.
_PENDING = "uninitialized_variables"


@contextmanager
def deferred_initialisation() -> Iterator[None]:
    """Build models here whose every weight will be `fill`ed (then `initialise_unfilled`)."""
    from keras.src.backend.common.stateless_scope import StatelessScope, in_stateless_scope

    if in_stateless_scope():
        raise RuntimeError("deferred_initialisation cannot be nested in a StatelessScope")
    with StatelessScope(initialize_variables=False):
        yield


def is_unfilled(variable: keras.Variable) -> bool:
    """True for a variable built under `deferred_initialisation` and not filled yet."""
    return getattr(variable, "_value", True) is None


def fill(variable: keras.Variable, value: Any) -> None:
    """Give `variable` the loaded `value` (a numpy array, cast to the variable's dtype):
    created from it when the variable has no value yet, assigned otherwise."""
    import tensorflow as tf

    if tuple(value.shape) != tuple(variable.shape):
        raise ValueError(f"{variable.path}: value of shape {value.shape}, needs {variable.shape}")
    if not is_unfilled(variable):
        variable.assign(tf.cast(value, variable.dtype))
        return
    variable._initializer = lambda shape, dtype: tf.cast(value, dtype)
    variable._deferred_initialize()  # what Keras itself calls on leaving the scope


def zero_unfilled(model: keras.Model) -> None:
    """Zeros for the model's unfilled weights, for a loader that assigns into existing
    variables (Keras's own `load_weights`): cheaper than random values, as overwritten."""
    import keras

    zeros = keras.initializers.Zeros()
    for variable in model.weights:
        if is_unfilled(variable):
            variable._initializer = zeros
            variable._deferred_initialize()  # what Keras itself calls on leaving the scope


def initialise_unfilled() -> None:
    """Keras's own initial values for every variable this thread left unfilled, and an
    empty list of pending variables (filled ones are dropped from it first)."""
    from keras.src.backend.common import global_state
    from keras.src.backend.common.variables import initialize_all_variables

    pending = global_state.get_global_attribute(_PENDING) or []
    global_state.set_global_attribute(_PENDING, [v for v in pending if is_unfilled(v)])
    initialize_all_variables()
