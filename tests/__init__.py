"""The test suite, a package so that benchmarks can reuse its reference models (`tests.reference`,
`tests.checkpoints`) by import rather than through sys.path."""
