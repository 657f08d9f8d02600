"""pyfuse3 adapter: a thin layer from FUSE requests to `store`."""
