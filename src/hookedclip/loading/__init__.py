"""Weight conversion into HookedCLIP, one module per source library."""
