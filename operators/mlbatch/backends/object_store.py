"""Copy folders between this machine and s3:// or gs:// prefixes, through the providers' hooks
(S3Hook, GCSHook), so connections and credentials come from Airflow connections.

Batch-prediction services read their input from and write their output to object storage; the
pipeline's prep and publish steps work on local staging folders. These helpers move files across.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse


def split_uri(uri: str) -> tuple[str, str, str]:
    """'s3://bucket/a/b' -> ('s3', 'bucket', 'a/b')."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("s3", "gs") or not parsed.netloc:
        raise ValueError(f"{uri!r}: expected an s3://bucket/prefix or gs://bucket/prefix URI")
    return parsed.scheme, parsed.netloc, parsed.path.lstrip("/")


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


class ObjectStore:
    """One bucket-style store. `conn_id` is the Airflow connection of the scheme's hook."""

    def __init__(self, scheme: str, conn_id: str):
        self.scheme, self.conn_id = scheme, conn_id

    @classmethod
    def for_uri(cls, uri: str, *, aws_conn_id: str = "aws_default",
                gcp_conn_id: str = "google_cloud_default") -> ObjectStore:
        scheme = split_uri(uri)[0]
        return cls(scheme, aws_conn_id if scheme == "s3" else gcp_conn_id)

    @property
    def hook(self):
        if self.scheme == "s3":
            from airflow.providers.amazon.aws.hooks.s3 import S3Hook

            return S3Hook(aws_conn_id=self.conn_id)
        from airflow.providers.google.cloud.hooks.gcs import GCSHook

        return GCSHook(gcp_conn_id=self.conn_id)

    def list(self, uri: str) -> list[str]:
        """Object keys under the prefix (full URIs), sorted."""
        _, bucket, prefix = split_uri(uri)
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        hook = self.hook
        if self.scheme == "s3":
            keys = hook.list_keys(bucket_name=bucket, prefix=prefix) or []
        else:
            keys = hook.list(bucket, prefix=prefix) or []
        return sorted(f"{self.scheme}://{bucket}/{k}" for k in keys if not k.endswith("/"))

    def upload_file(self, local: Path, uri: str) -> str:
        _, bucket, key = split_uri(uri)
        if self.scheme == "s3":
            self.hook.load_file(str(local), key=key, bucket_name=bucket, replace=True)
        else:
            self.hook.upload(bucket, key, filename=str(local))
        return uri

    def upload_dir(self, local: Path, uri: str, *, pattern: str = "*") -> list[str]:
        """Upload the files of `local` matching `pattern` under `uri`; returns their URIs."""
        files = sorted(p for p in Path(local).glob(pattern) if p.is_file())
        if not files:
            raise FileNotFoundError(f"nothing to upload: no {pattern} files in {local}")
        return [self.upload_file(f, join(uri, f.name)) for f in files]

    def download_dir(self, uri: str, local: Path) -> list[Path]:
        """Download every object under `uri` into `local`, keeping paths relative to the prefix."""
        _, bucket, prefix = split_uri(uri)
        local = Path(local)
        out = []
        for key_uri in self.list(uri):
            key = split_uri(key_uri)[2]
            target = local / key[len(prefix):].lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            if self.scheme == "s3":
                obj = self.hook.get_key(key, bucket_name=bucket)
                obj.download_file(str(target))
            else:
                self.hook.download(bucket, key, filename=str(target))
            out.append(target)
        return out

    def delete_prefix(self, uri: str) -> int:
        keys = self.list(uri)
        if not keys:
            return 0
        _, bucket, _ = split_uri(uri)
        names = [split_uri(k)[2] for k in keys]
        if self.scheme == "s3":
            self.hook.delete_objects(bucket=bucket, keys=names)
        else:
            for name in names:
                self.hook.delete(bucket, name)
        return len(names)

    def exists(self, uri: str) -> bool:
        _, bucket, key = split_uri(uri)
        if self.scheme == "s3":
            return self.hook.check_for_key(key, bucket_name=bucket)
        return self.hook.exists(bucket, key)
