"""The lesson's script as a user would run it: NumPy 20 epochs, then torch autograd 100 epochs.

The lesson ("PyTorch Tutorial 05 - Gradient Descent with Autograd and Backpropagation", a notebook)
copied faithfully: its NumPy cell with n_iters = 20 and its torch cell with n_iters = 100, joined into
one file, its explanatory comments left out. bench/pipeline.py times it.

    python bench/tutorial.py
"""

import numpy as np
import torch

# Numpy Implementation

X = np.array([1, 2, 3, 4], dtype=np.float32)
Y = np.array([2, 4, 6, 8], dtype=np.float32)

w = 0.0


def forward(x):
    return w * x


def loss(y, y_predicted):
    return ((y_predicted - y) ** 2).mean()


def gradient(x, y, y_predicted):
    return np.dot(2 * x, y_predicted - y).mean()


learning_rate = 0.01
n_iters = 20

print(f"Prediction before training: f(5) = {forward(5):.3f}")
print("******************\n")

for epoch in range(n_iters):
    y_pred = forward(X)
    l = loss(Y, y_pred)
    dw = gradient(X, Y, y_pred)
    w -= learning_rate * dw
    if epoch % 2 == 0:
        print(f"epoch {epoch + 1}: w = {w:.3f}, loss = {l:.8f}")
        print(f"Prediction during training: f(5) = {forward(5):.3f}")
        print("\n")

print("******************\n")
print(f"Prediction after training: f(5) = {forward(5):.3f}")

# Torch Implementation

X = torch.tensor([1, 2, 3, 4], dtype=torch.float32)
Y = torch.tensor([2, 4, 6, 8], dtype=torch.float32)

w = torch.tensor(0.0, dtype=torch.float32, requires_grad=True)

learning_rate = 0.01
n_iters = 100

print(f"Prediction before training: f(5) = {forward(5):.3f}")
print("******************\n")

for epoch in range(n_iters):
    y_pred = forward(X)
    l = loss(Y, y_pred)
    l.backward()
    with torch.no_grad():
        w -= learning_rate * w.grad
    w.grad.zero_()
    if epoch % 10 == 0:
        print(f"epoch {epoch + 1}: w = {w:.3f}, loss = {l:.8f}")
        print(f"Prediction during training: f(5) = {forward(5):.3f}")
        print("\n")

print("******************\n")
print(f"Prediction after training: f(5) = {forward(5):.3f}")
