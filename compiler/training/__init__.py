"""`nncc train`: data fitted to a network, and the training loop around its train_step."""
