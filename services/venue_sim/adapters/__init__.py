"""Market sources of the venue simulator: `replay` of real recordings (looping seamlessly) and a
seeded `synthetic` market. Both implement `domain.market_events.MarketSource`."""
