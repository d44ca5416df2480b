"""Small widgets of the console."""
