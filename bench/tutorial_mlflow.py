"""The lesson's script with MLflow logging added the usual way: what a user would otherwise write.

bench/tutorial.py plus one run per implementation in a sqlite store: `log_params`, one
`log_metric` call per value per epoch, and the final prediction f(5). bench/pipeline.py times it
against `dvc repro -f`.

    python bench/tutorial_mlflow.py sqlite:///path/to/mlflow.db
"""

import sys

import mlflow
import numpy as np
import torch

mlflow.set_tracking_uri(sys.argv[1])
mlflow.set_experiment("tutorial")

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

with mlflow.start_run(run_name="numpy"):
    mlflow.log_params({"implementation": "numpy", "learning_rate": learning_rate, "n_iters": n_iters})
    print(f"Prediction before training: f(5) = {forward(5):.3f}")
    print("******************\n")

    for epoch in range(n_iters):
        y_pred = forward(X)
        l = loss(Y, y_pred)
        dw = gradient(X, Y, y_pred)
        w -= learning_rate * dw
        mlflow.log_metric("w", float(w), step=epoch + 1)
        mlflow.log_metric("loss", float(l), step=epoch + 1)
        if epoch % 2 == 0:
            print(f"epoch {epoch + 1}: w = {w:.3f}, loss = {l:.8f}")
            print(f"Prediction during training: f(5) = {forward(5):.3f}")
            print("\n")

    print("******************\n")
    print(f"Prediction after training: f(5) = {forward(5):.3f}")
    mlflow.log_metric("prediction", float(forward(5)))

# Torch Implementation

X = torch.tensor([1, 2, 3, 4], dtype=torch.float32)
Y = torch.tensor([2, 4, 6, 8], dtype=torch.float32)

w = torch.tensor(0.0, dtype=torch.float32, requires_grad=True)

learning_rate = 0.01
n_iters = 100

with mlflow.start_run(run_name="torch"):
    mlflow.log_params({"implementation": "torch", "learning_rate": learning_rate, "n_iters": n_iters})
    print(f"Prediction before training: f(5) = {forward(5):.3f}")
    print("******************\n")

    for epoch in range(n_iters):
        y_pred = forward(X)
        l = loss(Y, y_pred)
        l.backward()
        with torch.no_grad():
            w -= learning_rate * w.grad
        w.grad.zero_()
        mlflow.log_metric("w", w.item(), step=epoch + 1)
        mlflow.log_metric("loss", l.item(), step=epoch + 1)
        if epoch % 10 == 0:
            print(f"epoch {epoch + 1}: w = {w:.3f}, loss = {l:.8f}")
            print(f"Prediction during training: f(5) = {forward(5):.3f}")
            print("\n")

    print("******************\n")
    print(f"Prediction after training: f(5) = {forward(5):.3f}")
    mlflow.log_metric("prediction", forward(5).item())
