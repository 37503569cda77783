"""Why ResNet50 trains slowly at 32 px on some CPUs: TensorFlow's convolution gradients, op by op.

    python benchmarks/conv_gradients.py [--threads 1]

At 32 px ResNet50's last stage works on 1x1 maps and the one before on 2x2. This times, on one
thread as a 1-CPU trial runs, the forward convolution of those stages' shapes (batch 32) against
its two gradients (`Conv2DBackpropInput`, `Conv2DBackpropFilter`), and the matrix product the
1x1 case reduces to, all through `tf.function` as Keras' default (non-XLA) CPU path runs them.
"""

from __future__ import annotations

import argparse
import time

from machine import cpu_model

BATCH = 32


def milliseconds(function, *args, repeats: int = 10) -> float:
    function(*args)
    started = time.perf_counter()
    for _ in range(repeats):
        function(*args)
    return (time.perf_counter() - started) / repeats * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    def compiled(function):
        return tf.function(function, autograph=False)

    print(f"{cpu_model()}, TensorFlow {tf.__version__}, {args.threads} thread(s), batch {BATCH}, milliseconds per call")
    print("| map | kernel | channels | forward | input gradient | filter gradient |")
    print("| --- | --- | --- | --- | --- | --- |")
    for size in (1, 2, 4, 7):
        for kernel, channels_in, channels_out in ((1, 2048, 512), (3, 512, 512)):
            x = tf.random.normal((BATCH, size, size, channels_in))
            w = tf.random.normal((kernel, kernel, channels_in, channels_out))
            dy = tf.random.normal((BATCH, size, size, channels_out))
            strides = [1, 1, 1, 1]
            forward = compiled(lambda x, w: tf.nn.conv2d(x, w, 1, "SAME"))
            grad_input = compiled(lambda w, dy: tf.raw_ops.Conv2DBackpropInput(  # noqa: B023
                input_sizes=[BATCH, size, size, channels_in], filter=w, out_backprop=dy, strides=strides, padding="SAME"))
            grad_filter = compiled(lambda x, dy: tf.raw_ops.Conv2DBackpropFilter(  # noqa: B023
                input=x, filter_sizes=[kernel, kernel, channels_in, channels_out], out_backprop=dy, strides=strides, padding="SAME"))
            print(f"| {size}x{size} | {kernel}x{kernel} | {channels_in}->{channels_out} | {milliseconds(forward, x, w):.1f} | "
                  f"{milliseconds(grad_input, w, dy):.1f} | {milliseconds(grad_filter, x, dy):.1f} |", flush=True)
    a, b = tf.random.normal((BATCH, 512)), tf.random.normal((2048, 512))
    print(f"matrix product {BATCH}x512 by 512x2048 (the 1x1 input gradient's arithmetic): "
          f"{milliseconds(compiled(lambda a, b: tf.matmul(a, b, transpose_b=True)), a, b):.1f} ms")


if __name__ == "__main__":
    main()
