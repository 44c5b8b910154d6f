"""market-data: venue WebSocket + REST → validated, normalized market data on the bus."""
