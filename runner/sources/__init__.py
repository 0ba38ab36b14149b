"""Build contexts: packing a directory as Docker would send it, spooling and checking a stored
tar on the worker, git checkouts."""
