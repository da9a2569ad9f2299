//! Opening the lake: the [`Lake`] handle over an [`ObjectStore`] rooted at the configured location,
//! so every other path in this module is relative and every layer reads and writes the same objects.
//! What the handle reads and writes lives beside the objects it concerns: raw files in `raw.rs`,
//! versions, manifests and `_current` in `versions.rs`, generations in `generations.rs`, Parquet
//! objects in `parquet.rs`.
//!
//! Local directories (plain paths or `file:///abs/path`) are created when missing, and emptied
//! directories removed; object_store
//! writes a local object to a temporary file and renames it, so a put is atomic there as on S3.
//! `s3://bucket/prefix` takes credentials and region from the usual `AWS_*` environment variables.
//! `memory://` is an in-process store for tests.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::rooted::Rooted;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::{BackoffConfig, ObjectStore, RetryConfig};

/// The lake: one object store, and every read and write of the contract's objects (ARCHITECTURE.md
/// §4) as a method that takes what the object is (a view and a version, a topic, a partition and an
/// offset range), never a hand-built path. Cheap to clone: the store is shared.
#[derive(Debug, Clone)]
pub struct Lake {
    store: Arc<dyn ObjectStore>,
}

impl Lake {
    /// Opens the lake at `url` (see [`crate::config::LakeConfig`]).
    pub fn open(url: &str) -> Result<Self, StoreError> {
        open_store(url).map(Self::new)
    }

    /// A lake over `store` (tests hand in an in-memory or prefixed store).
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Self { store }
    }

    /// The directories right under `prefix` that `parse` reads (partitions, versions), ascending;
    /// other entries are not the contract's and are skipped.
    pub(super) async fn child_dirs<T: Ord>(
        &self,
        prefix: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<Vec<T>, LakeError> {
        let prefix = object_store::path::Path::from(prefix);
        let listing = self.store.list_with_delimiter(Some(&prefix)).await?;
        let mut children: Vec<T> = (listing.common_prefixes.iter())
            .filter_map(|dir| parse(dir.filename()?))
            .collect();
        children.sort_unstable();
        Ok(children)
    }

    /// The object store itself: for DataFusion's scans, which register it under
    /// [`super::LAKE_URL`], and for the writes only one layer makes (parts, the run lock).
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }
}

/// Why a read or write of the lake failed. A missing object is not an error where the contract
/// allows it to be absent (no `_current` before the first publish): such reads return `None`.
#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    #[error("cannot read or write the lake")]
    Store(#[from] object_store::Error),
    #[error("{path} is not valid")]
    Corrupt {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path} is not a readable Parquet file")]
    Parquet {
        path: String,
        #[source]
        source: parquet::errors::ParquetError,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the lake directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the lake at {url}")]
    Open {
        url: String,
        #[source]
        source: object_store::Error,
    },
    #[error(
        "{url:?} is not a lake location (a directory, file:///absolute/path or s3://bucket/prefix)"
    )]
    Unsupported { url: String },
}

fn local(path: &Path) -> Result<Arc<dyn ObjectStore>, StoreError> {
    let create_error = |source| StoreError::CreateDir {
        path: path.to_owned(),
        source,
    };
    std::fs::create_dir_all(path).map_err(create_error)?;
    let absolute = std::path::absolute(path).map_err(create_error)?;
    let store = LocalFileSystem::new_with_prefix(&absolute).map_err(|source| StoreError::Open {
        url: absolute.display().to_string(),
        source,
    })?;
    // Deleting a version's last object removes its directory, as on S3 (where prefixes are not
    // objects): otherwise a listing would keep showing collected versions.
    Ok(Arc::new(store.with_automatic_cleanup(true)))
}

/// How long one S3 request is retried (object_store's default is up to 3 minutes): an outage
/// surfaces within seconds as a 503 or a failed run, and the layers retry on their own terms (the
/// archiver until the lake answers, the scheduler at its next interval, queries on the next call).
const RETRY: RetryConfig = RetryConfig {
    backoff: BackoffConfig {
        init_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(2),
        base: 2.0,
    },
    max_retries: 4,
    retry_timeout: Duration::from_secs(10),
};

fn open_store(url: &str) -> Result<Arc<dyn ObjectStore>, StoreError> {
    match url.split_once("://") {
        None => local(Path::new(url)),
        Some(("file", path)) => local(Path::new(path)),
        Some(("memory", _)) => Ok(Arc::new(InMemory::new())),
        Some(("s3", rest)) => {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let store = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_retry(RETRY)
                .build()
                .map_err(|source| StoreError::Open {
                    url: url.to_owned(),
                    source,
                })?;
            let prefix = prefix.trim_matches('/');
            if prefix.is_empty() {
                Ok(Arc::new(store))
            } else {
                Ok(Arc::new(Rooted::new(Arc::new(store), prefix)))
            }
        }
        _ => Err(StoreError::Unsupported {
            url: url.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use object_store::path::Path as ObjectPath;
    use object_store::{ObjectStoreExt, PutPayload};

    use super::*;

    #[tokio::test]
    async fn a_local_lake_is_created_and_rooted_at_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("nested/lake");
        let store = open_store(root.to_str().unwrap()).unwrap();
        store
            .put(
                &ObjectPath::from("views/v/_current"),
                PutPayload::from_static(b"{}"),
            )
            .await
            .unwrap();
        assert!(root.join("views/v/_current").is_file());
        let via_url = open_store(&format!("file://{}", root.display())).unwrap();
        let bytes = via_url
            .get(&ObjectPath::from("views/v/_current"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(&bytes[..], b"{}");
    }

    #[test]
    fn unknown_schemes_are_refused() {
        let error = open_store("ftp://host/lake").err().unwrap();
        assert_eq!(
            error.to_string(),
            "\"ftp://host/lake\" is not a lake location (a directory, file:///absolute/path or s3://bucket/prefix)"
        );
    }
}
