"""What differs between databases: the clock (``clock``), and later the other capabilities."""
