//! Publishing a version and collecting old ones (steps 3 and 4 of a run, see the parent module):
//! the manifest, then `_current` (the one write that changes what readers see); garbage
//! collection of versions past `keep_versions` and of incomplete ones left by crashed runs
//! (manifest first, so a half-deleted version never looks complete). Also the fault hooks that
//! prove each step leaves the lake consistent.

use std::collections::HashSet;

use tributary_schemas::lake::{Lake, Manifest};

use super::BatchError;

/// Makes `manifest`'s version the live one: the manifest first, then `_current` (the only write
/// that changes what readers see). A crash between the two leaves the previous version live and
/// the new one complete but unlisted; the next run collects it.
pub(super) async fn publish(lake: &Lake, manifest: &Manifest) -> Result<(), BatchError> {
    lake.write_manifest(manifest).await?;
    crash_point("before_current");
    lake.write_current(&manifest.view, manifest.version).await?;
    Ok(())
}

/// A test hook, compiled only with the `fault-injection` feature (the workspace's tests enable it;
/// a release build has no such hook): `TRIBUTARY_BATCH_CRASH_AT=<point>` aborts the process at that
/// point of a publish, as a kill -9 would, so tests can prove each point leaves the lake
/// consistent. Points: `after_parts` (parts written, no manifest), `before_current` (manifest
/// written, `_current` not replaced), and in the raw upkeep ([`super::maintenance`])
/// `compaction_written` (a compacted file put, none of the small ones deleted) and
/// `compaction_deleting` (one of them deleted).
#[cfg(feature = "fault-injection")]
pub(super) fn crash_point(point: &str) {
    if std::env::var("TRIBUTARY_BATCH_CRASH_AT").is_ok_and(|wanted| wanted == point) {
        tracing::error!(point, "TRIBUTARY_BATCH_CRASH_AT: aborting the process");
        std::process::abort();
    }
}

#[cfg(not(feature = "fault-injection"))]
pub(super) fn crash_point(_point: &str) {}

/// A view's version directories, ascending: the complete ones (with their manifests) and the
/// numbers of those without a manifest (being written, or left by a crashed run).
pub(super) async fn versions_of(
    lake: &Lake,
    view: &str,
) -> Result<(Vec<Manifest>, Vec<u64>), BatchError> {
    let mut complete = Vec::new();
    let mut incomplete = Vec::new();
    for version in lake.versions(view).await? {
        match lake.manifest(view, version).await? {
            Some(manifest) => complete.push(manifest),
            None => incomplete.push(version),
        }
    }
    Ok((complete, incomplete))
}

/// Keeps the live version and the newest `keep` complete versions; deletes the rest, and the
/// incomplete versions crashed runs left behind. Call only while holding the run lock.
pub(super) async fn collect_garbage(
    lake: &Lake,
    view: &str,
    keep: usize,
) -> Result<Vec<u64>, BatchError> {
    let current = lake.current(view).await?;
    let (complete, incomplete) = versions_of(lake, view).await?;
    let old_complete = complete.len().saturating_sub(keep);
    let doomed: Vec<u64> = complete[..old_complete]
        .iter()
        .map(|m| &m.version)
        .chain(&incomplete)
        .copied()
        .filter(|v| Some(*v) != current)
        .collect();
    // Parts are shared: an incremental version lists its base's parts. Keep every part a kept
    // version lists, whichever version's directory it is in.
    let shared: HashSet<String> = (complete.iter())
        .filter(|m| !doomed.contains(&m.version))
        .flat_map(|m| m.files.iter().map(|f| f.path.clone()))
        .collect();
    for &version in &doomed {
        lake.delete_version_except(view, version, &shared).await?;
        tracing::info!(view, version, "removed an old or incomplete version");
    }
    Ok(doomed)
}
