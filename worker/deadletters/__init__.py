"""Dead letters: what warden writes on one, how one is read, and the operations on a queue of
them."""
