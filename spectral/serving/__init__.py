"""The model as an HTTP service (`spectral serve`, the optional `serve` extra): uploads, limits, the server."""
