"""WAN building blocks: the lossless wire envelope (envelope.py) and rate control (rate.py).

Both are pure where they can be: bytes in, bytes out; time passed in, decisions out. The
senders and the hub do the I/O.
"""
