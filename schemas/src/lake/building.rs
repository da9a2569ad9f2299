//! A view's state beside its versions. `views/<view>/_building`: how far the recompute that builds
//! a view's first version under a new definition has got. `views/<view>/_removed`: since when the
//! configuration no longer has the view, counted in batch runs, until its versions go. The build may run in another process than the one answering (a cron
//! `tributary batch run`, another replica's scheduler), so the progress lives in the lake, where
//! every serving process reads it for `/v1/views`. The run deletes it when it ends; one killed
//! leaves it behind with an `updated_at` that stops moving, which readers show as not running.

use chrono::{DateTime, Utc};
use object_store::ObjectStoreExt;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use super::{Lake, LakeError, current_path, view_dir};

/// A build's progress as of `updated_at`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildProgress {
    /// The definition being built.
    pub definition_hash: String,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub files_done: usize,
    pub files_total: usize,
    pub rows_done: u64,
    /// `None` when the input's row count is not known up front.
    pub rows_total: Option<u64>,
}

impl BuildProgress {
    /// The share of the input read, in `[0, 1]`, when it can be told.
    pub fn fraction(&self) -> Option<f64> {
        let total = self.rows_total.filter(|&t| t > 0)?;
        Some((self.rows_done as f64 / total as f64).min(1.0))
    }
}

fn building_path(view: &str) -> String {
    format!("{}/_building", view_dir(view))
}

fn removed_path(view: &str) -> String {
    format!("{}/_removed", view_dir(view))
}

/// A view the configuration no longer has: since when, and how many batch runs have seen it so.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Removed {
    pub since: DateTime<Utc>,
    pub runs: u32,
}

impl Lake {
    /// The progress of the build of `view` last written, if any.
    pub async fn build_progress(&self, view: &str) -> Result<Option<BuildProgress>, LakeError> {
        self.get_json(&building_path(view)).await
    }

    pub async fn put_build_progress(
        &self,
        view: &str,
        progress: &BuildProgress,
    ) -> Result<(), LakeError> {
        self.put_json(&building_path(view), progress).await
    }

    /// Removes `view`'s build progress (the build ended, published or not).
    pub async fn clear_build_progress(&self, view: &str) -> Result<(), LakeError> {
        self.delete_if_there(&building_path(view)).await
    }

    /// Every view with a directory in the lake, configured or not.
    pub async fn view_names(&self) -> Result<Vec<String>, LakeError> {
        self.child_dirs("views", |name| Some(name.to_owned())).await
    }

    /// How long `view` has been out of the configuration, if it is.
    pub async fn removed(&self, view: &str) -> Result<Option<Removed>, LakeError> {
        self.get_json(&removed_path(view)).await
    }

    pub async fn put_removed(&self, view: &str, removed: &Removed) -> Result<(), LakeError> {
        self.put_json(&removed_path(view), removed).await
    }

    /// The view is configured again: its versions are its own again.
    pub async fn clear_removed(&self, view: &str) -> Result<(), LakeError> {
        self.delete_if_there(&removed_path(view)).await
    }

    /// Deletes everything of `view`: `_current` first (no reader takes a version being deleted),
    /// then its versions, then its bookkeeping.
    pub async fn forget_view(&self, view: &str) -> Result<(), LakeError> {
        self.delete_if_there(&current_path(view)).await?;
        for version in self.versions(view).await? {
            self.delete_version(view, version).await?;
        }
        self.clear_build_progress(view).await?;
        self.clear_removed(view).await
    }

    async fn delete_if_there(&self, path: &str) -> Result<(), LakeError> {
        match self.store().delete(&Path::from(path)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }
}
