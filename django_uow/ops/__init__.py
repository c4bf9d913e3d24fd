"""What operators read: counts and lags (``status``, ``health``), why an event or a
delivery is held back (``holds``), and dead letters grouped by cause (``deadletters``)."""
