//! Batch view versions: which versions exist, which one is live, what each covers, and the writes
//! that publish, roll back and collect them.
//!
//! Every layer reads versions the same way: the speed layer seeks to the live manifest's boundary,
//! serving pins a version per query, and the batch layer picks the next version number. Only the
//! batch layer writes (publish, rollback, garbage collection), in the order the contract requires:
//! parts, then `manifest.json`, then `_current`; deleting, the manifest first.

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};

use super::{
    CurrentPointer, Lake, LakeError, Manifest, current_path, manifest_path, parse_version_segment,
    version_dir, version_part, view_dir,
};

impl Lake {
    /// Reads the JSON object at `path`; `None` when there is none.
    pub(super) async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<Option<T>, LakeError> {
        let bytes = match self.store().get(&Path::from(path)).await {
            Ok(found) => found.bytes().await?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(error) => return Err(error.into()),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| LakeError::Corrupt {
                path: path.to_owned(),
                source,
            })
    }

    /// Replaces the JSON object at `path` with `value` (one atomic put).
    pub(super) async fn put_json<T: serde::Serialize>(
        &self,
        path: &str,
        value: &T,
    ) -> Result<(), LakeError> {
        let json = serde_json::to_vec_pretty(value).expect("the lake's JSON objects serialize");
        self.store()
            .put(&Path::from(path), PutPayload::from(json))
            .await?;
        Ok(())
    }

    /// The live version of `view`, `None` before the first publish.
    pub async fn current(&self, view: &str) -> Result<Option<u64>, LakeError> {
        let pointer: Option<CurrentPointer> = self.get_json(&current_path(view)).await?;
        Ok(pointer.map(|p| p.version))
    }

    /// The manifest of one version; `None` if the version has none (not published, or being
    /// written).
    pub async fn manifest(&self, view: &str, version: u64) -> Result<Option<Manifest>, LakeError> {
        self.get_json(&manifest_path(view, version)).await
    }

    /// The manifest `_current` points at.
    pub async fn live_manifest(&self, view: &str) -> Result<Option<Manifest>, LakeError> {
        match self.current(view).await? {
            Some(version) => self.manifest(view, version).await,
            None => Ok(None),
        }
    }

    /// Every version directory of `view` (complete or not), ascending.
    pub async fn versions(&self, view: &str) -> Result<Vec<u64>, LakeError> {
        self.child_dirs(&view_dir(view), parse_version_segment)
            .await
    }

    /// Every object under a version's directory (parts and manifest).
    pub async fn version_objects(&self, view: &str, version: u64) -> Result<Vec<Path>, LakeError> {
        let prefix = Path::from(version_dir(view, version));
        let objects: Vec<_> = self.store().list(Some(&prefix)).try_collect().await?;
        Ok(objects.into_iter().map(|meta| meta.location).collect())
    }

    /// Whether the object at `path` (a manifest's part) exists.
    pub async fn exists(&self, path: &str) -> Result<bool, LakeError> {
        match self.store().head(&Path::from(path)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    /// Puts part `part` of a version being written; returns its path (for the manifest).
    pub async fn put_part(
        &self,
        view: &str,
        version: u64,
        part: usize,
        parquet: bytes::Bytes,
    ) -> Result<String, LakeError> {
        let path = version_part(view, version, part);
        self.store()
            .put(&Path::from(path.as_str()), PutPayload::from(parquet))
            .await?;
        Ok(path)
    }

    /// Writes `manifest` into its version's directory: the version is complete from now on (its
    /// parts must already be written), but not live until [`Self::write_current`].
    pub async fn write_manifest(&self, manifest: &Manifest) -> Result<(), LakeError> {
        let path = manifest_path(&manifest.view, manifest.version);
        self.store()
            .put(&Path::from(path), PutPayload::from(manifest.to_json()))
            .await?;
        Ok(())
    }

    /// Makes `version` the live one of `view`: the only write that changes what readers see.
    pub async fn write_current(&self, view: &str, version: u64) -> Result<(), LakeError> {
        let pointer =
            serde_json::to_vec(&CurrentPointer { version }).expect("a pointer serializes");
        self.store()
            .put(&Path::from(current_path(view)), PutPayload::from(pointer))
            .await?;
        Ok(())
    }

    /// Deletes a version: its manifest first, so that a deletion interrupted half-way never leaves
    /// a version that looks complete, then everything else in its directory.
    pub async fn delete_version(&self, view: &str, version: u64) -> Result<(), LakeError> {
        self.delete_version_except(view, version, &Default::default())
            .await
    }

    /// [`Self::delete_version`], but for the objects in `keep` (lake paths): parts a kept version
    /// lists, shared with this one.
    pub async fn delete_version_except(
        &self,
        view: &str,
        version: u64,
        keep: &std::collections::HashSet<String>,
    ) -> Result<(), LakeError> {
        match self
            .store()
            .delete(&Path::from(manifest_path(view, version)))
            .await
        {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(error) => return Err(error.into()),
        }
        for object in self.version_objects(view, version).await? {
            if !keep.contains(object.as_ref()) {
                self.store().delete(&object).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::{DateTime, Utc};
    use object_store::memory::InMemory;

    use super::*;
    use crate::lake::{Boundary, MANIFEST_FORMAT, ManifestFile};

    fn manifest(version: u64) -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT,
            view: "v".to_owned(),
            definition_hash: "00".to_owned(),
            version,
            created_at: DateTime::<Utc>::from_timestamp(1_795_046_400, 0).unwrap(),
            row_count: 1,
            files: vec![ManifestFile {
                path: version_part("v", version, 0),
                rows: 1,
                bytes: 2,
            }],
            epoch_size: 1,
            generation: 0,
            closed_generations: Vec::new(),
            boundary: Boundary::default(),
            newest_bucket: None,
            full_at: None,
            deltas: 0,
            retained_from: None,
            definition: None,
        }
    }

    #[tokio::test]
    async fn a_version_is_complete_with_its_manifest_live_with_current_and_deleted_manifest_first()
    {
        let lake = Lake::new(Arc::new(InMemory::new()));
        assert_eq!(lake.current("v").await.unwrap(), None);
        assert_eq!(lake.live_manifest("v").await.unwrap(), None);
        for version in [3, 1] {
            let path = lake
                .put_part("v", version, 0, bytes::Bytes::from_static(b"pq"))
                .await
                .unwrap();
            assert_eq!(path, version_part("v", version, 0));
        }
        lake.write_manifest(&manifest(3)).await.unwrap();
        assert_eq!(lake.versions("v").await.unwrap(), [1, 3]);
        assert_eq!(lake.manifest("v", 1).await.unwrap(), None, "no manifest");
        assert_eq!(lake.current("v").await.unwrap(), None, "complete, not live");
        lake.write_current("v", 3).await.unwrap();
        assert_eq!(lake.live_manifest("v").await.unwrap(), Some(manifest(3)));
        assert!(lake.exists(&version_part("v", 3, 0)).await.unwrap());
        assert!(!lake.exists(&version_part("v", 3, 1)).await.unwrap());

        lake.delete_version("v", 3).await.unwrap();
        assert_eq!(lake.versions("v").await.unwrap(), [1]);
        assert!(lake.version_objects("v", 3).await.unwrap().is_empty());
        // `_current` is the batch layer's to move first: deleting does not touch it.
        assert_eq!(lake.current("v").await.unwrap(), Some(3));
        assert_eq!(lake.live_manifest("v").await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_corrupt_pointer_names_its_path() {
        let lake = Lake::new(Arc::new(InMemory::new()));
        lake.store()
            .put(
                &Path::from(current_path("v")),
                PutPayload::from_static(b"{\"version\":\"x\"}"),
            )
            .await
            .unwrap();
        let error = lake.current("v").await.unwrap_err();
        assert_eq!(error.to_string(), "views/v/_current is not valid");
    }
}
