"""Account sync: two holders exchange the epoch facts each lacks (``protocols/epochs``)."""
