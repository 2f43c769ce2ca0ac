"""A run's bookkeeping on storage: paths, the partition commit and its lease, row counts, rejections,
statistics, resources, staged files, assets, job processes. Imported by operators, backends and the
local tooling; imports `spec`, `storage` and `errors`."""
