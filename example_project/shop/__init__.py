"""A small shop: products with stock, orders that reserve it, payments."""
