"""Beam pipeline options with a local-friendly default runner.

Beam's DirectRunner default now downloads the Prism binary, which fails
offline; FnApiRunner runs in-process (or multi-process with
--direct_running_mode=multi_processing) with nothing to download.
"""
from __future__ import annotations

from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions, SetupOptions

DEFAULT_RUNNER = "FnApiRunner"


def pipeline_options(beam_args: list[str] | None = None) -> PipelineOptions:
    """PipelineOptions from leftover CLI args; FnApiRunner unless --runner is given."""
    args = list(beam_args or [])
    if not any(a == "--runner" or a.startswith("--runner=") for a in args):
        args.append(f"--runner={DEFAULT_RUNNER}")
    options = PipelineOptions(args)
    # Workers import mlbatch_beam as an installed package, not from a pickled __main__.
    options.view_as(SetupOptions).save_main_session = False
    if options.view_as(GoogleCloudOptions).no_auth:
        anonymous_gcs()
    # Matching input before the pipeline exists (fail fast) needs the filesystem flags too (S3 endpoint).
    from apache_beam.io.filesystems import FileSystems

    FileSystems.set_options(options)
    return options


def anonymous_gcs() -> None:
    """Honour Beam's own `--no_auth` flag ("Skips authorizing credentials with Google Cloud") for GCS,
    which Beam 2.77's GCS client ignores: it asks Application Default Credentials with 4 backed-off
    retries (about 25 s per job process) before connecting anonymously anyway. Used only for anonymous
    connections (a storage emulator); the credentials cache is Beam's (apache_beam.internal.gcp.auth)."""
    from apache_beam.internal.gcp import auth

    with auth._Credentials._credentials_lock:
        auth._Credentials._credentials, auth._Credentials._credentials_init = None, True
