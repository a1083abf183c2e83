"""The training loop (`engine`: one readable loop, resumable from its checkpoint, DDP)
and the sample grid it draws for trackers."""
