"""tokenward: keeps API credentials alive."""
