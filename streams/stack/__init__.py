"""The embedded servers: start, stop, provision and inspect them."""
