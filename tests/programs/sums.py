"""The loss, both gradients, sum(xy) and sum(x^2) of a seeded data set longer than three chunks, printed as
float.hex: compared bit for bit across BLAS and SIMD kernels."""

import numpy as np

from gdpipe import linear

rng = np.random.default_rng(7)
n = 3 * linear.CHUNK + 17
x = rng.uniform(-1, 1, n).astype(np.float32)
y = (2 * x + rng.normal(0, 0.3, n)).astype(np.float32)
y_hat = linear.predict(np.float32(1.37), x)
gradients = linear.mse_grad(x, y, y_hat), linear.lesson_grad(x, y, y_hat)
print(*(float(v).hex() for v in (linear.mse(y_hat, y), *gradients, linear.dot64(x, y), linear.dot64(x, x))))
