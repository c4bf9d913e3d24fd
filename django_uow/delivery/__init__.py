"""Handler deliveries: the ``@event_handler`` registry and its names (``handlers``,
``names``), running one delivery with its inbox row (``running``), the delivery rows
themselves (``rows``), ordered handlers (``ordering``) and the consumer lag (``lag``)."""
