"""gdpipe: the lesson "gradient descent with autograd" as a reproducible, tracked, gated ML pipeline."""
