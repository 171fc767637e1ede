"""voicegrid benchmarks (``make bench``): each module prints a table and returns a JSON dict."""
