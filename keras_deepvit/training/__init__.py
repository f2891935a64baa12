"""Training: the papers' recipe as Keras pieces, data pipelines, distribution."""
