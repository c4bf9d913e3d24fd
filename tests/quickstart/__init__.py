"""The quickstart's code, as the docs show it (included with snippets) and tests run it."""
