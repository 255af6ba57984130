"""What users run and read: the `mlprune` command line, the embedded demo, packaged data and
model, report plots, and the timing helpers benchmarks print with. Built on the public API."""
