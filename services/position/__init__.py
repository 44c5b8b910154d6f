"""position: the only writer to the venue; orders, fills and positions."""
