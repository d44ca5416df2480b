"""Delivery: one isolated worker per destination, sending held objects until confirmed."""
