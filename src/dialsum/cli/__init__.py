"""The `dialsum` console script (`main`: the parser and error handling) and one module per command group. The
top layer: it may import anything, and nothing imports it.
"""
