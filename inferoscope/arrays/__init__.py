"""Contract v0.2 array files (``.npy``): writing, reading and checking them."""
