"""XLA compilation: a function compiled with XLA on either backend, and the programs a process compiled.

Beside `carclf.runtime`, the one other module that names TensorFlow and JAX; both import them
inside the functions that need them, so this module loads on either backend.
"""

from __future__ import annotations

import functools
import re
from typing import Callable

STEP_PROGRAM = re.compile(r"\b(train|test|predict)_step\b")  # JAX names them jit(train_step), ...


def xla_compiled(function: Callable) -> Callable:
    """`function` compiled with XLA: `jax.jit` on JAX, `tf.function(jit_compile=True)` on TensorFlow.

    Inside a train step the step's own compilation takes over on JAX. On a CPU Keras runs
    TensorFlow models without XLA (`jit_compile="auto"`), where the in-model rotation's
    element-wise work alone ran at 370 images/s at 224 px; compiled by itself, inside an otherwise
    ordinary graph, it ran at 2,444 (benchmarks/README.md).
    """
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return jax.jit(function)
    import tensorflow as tf

    return tf.function(function, jit_compile=True, autograph=False)


class CompileCounter:
    """The XLA programs this process compiled, by name, from JAX's monitoring events (JAX only).

    JAX records a backend-compile event for every program it compiles or loads from its persistent
    cache, the load preceded by a cache-hit event; a loaded program is not counted as compiled.
    `step_programs` counts Keras' train, test and predict steps (`jit(train_step)`, ...), the programs
    that take seconds to compile, and not the small kernels of eager operations. On TensorFlow
    nothing is counted (`counting` is False).
    """

    BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
    CACHE_HIT = "/jax/compilation_cache/cache_hits"

    def __init__(self):
        import keras

        self.counting = keras.backend.backend() == "jax"
        self.compiled: list[str] = []  # names of the programs compiled, in order
        self.loaded: list[str] = []  # names of the programs read from the persistent cache
        self._hit = False
        if self.counting:
            import jax.monitoring

            jax.monitoring.register_event_listener(self._on_event)
            jax.monitoring.register_event_duration_secs_listener(self._on_duration)

    def _on_event(self, event: str, **kwargs) -> None:
        if event == self.CACHE_HIT:
            self._hit = True

    def _on_duration(self, event: str, duration_secs: float, fun_name: str = "", **kwargs) -> None:
        if event == self.BACKEND_COMPILE:
            (self.loaded if self._hit else self.compiled).append(str(fun_name))
            self._hit = False

    def step_programs(self, since: int = 0) -> int:
        """Keras step programs compiled after the first `since` compilations."""
        return sum(bool(STEP_PROGRAM.search(name)) for name in self.compiled[since:])


@functools.cache
def compile_counter() -> CompileCounter:
    """This process's one `CompileCounter` (JAX's listeners stay registered for the process's life)."""
    return CompileCounter()
