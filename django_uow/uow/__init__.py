"""The unit of work: ``UnitOfWork`` and its repository (``unit_of_work``), the
``@unit_of_work`` decorator (``decorator``), the journal of what a unit saw (``journal``)
and the flush of registered changes at commit (``flush``)."""
