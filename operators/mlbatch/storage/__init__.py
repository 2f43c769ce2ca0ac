"""One storage layer for local paths, gs:// and s3:// (`layer`), and compare-and-swap on one object
(`conditional`). Imported by everything that reads or writes data; imports nothing of mlbatch but errors."""
