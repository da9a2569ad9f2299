//! Reading batch view versions: which versions exist, which one is live, and what each covers.
//!
//! Every layer reads versions the same way: the speed layer seeks to the live manifest's boundary,
//! serving pins a version per query, and the batch layer picks the next version number. Writing
//! (publish, rollback, garbage collection) belongs to the batch layer alone.

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use super::{
    CurrentPointer, Manifest, current_path, manifest_path, parse_version_segment, view_dir,
};

#[derive(Debug, thiserror::Error)]
pub enum VersionError {
    #[error("cannot read the lake")]
    Store(#[from] object_store::Error),
    #[error("{path} is not valid")]
    Corrupt {
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

async fn get_json<T: serde::de::DeserializeOwned>(
    store: &dyn ObjectStore,
    path: &str,
) -> Result<Option<T>, VersionError> {
    let bytes = match store.get(&Path::from(path)).await {
        Ok(found) => found.bytes().await?,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(error) => return Err(error.into()),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| VersionError::Corrupt {
            path: path.to_owned(),
            source,
        })
}

/// The live version of `view`, `None` before the first publish.
pub async fn read_current(
    store: &dyn ObjectStore,
    view: &str,
) -> Result<Option<u64>, VersionError> {
    let pointer: Option<CurrentPointer> = get_json(store, &current_path(view)).await?;
    Ok(pointer.map(|p| p.version))
}

/// The manifest of one version; `None` if the version has none (not published, or being written).
pub async fn read_manifest(
    store: &dyn ObjectStore,
    view: &str,
    version: u64,
) -> Result<Option<Manifest>, VersionError> {
    get_json(store, &manifest_path(view, version)).await
}

/// The manifest `_current` points at.
pub async fn live_manifest(
    store: &dyn ObjectStore,
    view: &str,
) -> Result<Option<Manifest>, VersionError> {
    match read_current(store, view).await? {
        Some(version) => read_manifest(store, view, version).await,
        None => Ok(None),
    }
}

/// Every version directory of `view` (complete or not), ascending.
pub async fn list_versions(store: &dyn ObjectStore, view: &str) -> Result<Vec<u64>, VersionError> {
    let listing = store
        .list_with_delimiter(Some(&Path::from(view_dir(view))))
        .await?;
    let mut versions: Vec<u64> = listing
        .common_prefixes
        .iter()
        .filter_map(|prefix| parse_version_segment(prefix.filename()?))
        .collect();
    versions.sort_unstable();
    Ok(versions)
}

/// Every object under a version's directory (parts and manifest).
pub async fn version_objects(
    store: &dyn ObjectStore,
    view: &str,
    version: u64,
) -> Result<Vec<Path>, VersionError> {
    let prefix = Path::from(super::version_dir(view, version));
    let objects: Vec<_> = store.list(Some(&prefix)).try_collect().await?;
    Ok(objects.into_iter().map(|meta| meta.location).collect())
}
